#include "trend.h"

#include <algorithm>
#include <vector>

namespace kleak::core {

namespace {

// At most max_points of `points`, evenly spread, the first and last always in.
std::vector<TrendPoint> spread(std::span<const TrendPoint> points, std::size_t max_points) {
    if (points.size() <= max_points || max_points < 2) return {points.begin(), points.end()};
    std::vector<TrendPoint> kept;
    kept.reserve(max_points);
    for (std::size_t i = 0; i < max_points; ++i) kept.push_back(points[i * (points.size() - 1) / (max_points - 1)]);
    return kept;
}

}  // namespace

double rising_share(std::span<const TrendPoint> points, std::size_t max_points) {
    const std::vector<TrendPoint> kept = spread(points, max_points);
    std::size_t rising = 0, differing = 0;
    for (std::size_t i = 0; i < kept.size(); ++i)
        for (std::size_t j = i + 1; j < kept.size(); ++j) {
            if (kept[j].y == kept[i].y) continue;
            ++differing;
            rising += kept[j].y > kept[i].y;
        }
    return differing == 0 ? 1.0 : static_cast<double>(rising) / static_cast<double>(differing);
}

double theil_sen_slope(std::span<const TrendPoint> points, std::size_t max_points) {
    const std::vector<TrendPoint> kept = spread(points, max_points);
    std::vector<double> slopes;
    slopes.reserve(kept.size() * (kept.size() - 1) / 2);
    for (std::size_t i = 0; i < kept.size(); ++i)
        for (std::size_t j = i + 1; j < kept.size(); ++j)
            if (kept[j].t_s > kept[i].t_s) slopes.push_back((kept[j].y - kept[i].y) / (kept[j].t_s - kept[i].t_s));
    if (slopes.empty()) return 0;
    const auto mid = slopes.begin() + static_cast<std::ptrdiff_t>(slopes.size() / 2);
    std::nth_element(slopes.begin(), mid, slopes.end());
    if (slopes.size() % 2 == 1) return *mid;
    const double upper = *mid;
    const double lower = *std::max_element(slopes.begin(), mid);
    return (lower + upper) / 2;
}

}  // namespace kleak::core
