// Robust trend of a series: the Theil-Sen estimator, the median of the
// slopes between every pair of points. Up to half the points can be bursts or
// outliers without moving it much, which is why a verdict uses it: one burst
// of allocations does not make a leak, a steady climb does.
#pragma once

#include <cstdint>
#include <span>

namespace kleak::core {

struct TrendPoint {
    double t_s;  // seconds on any fixed origin
    double y;
};

// Median pairwise slope (y per second) of `points` (in time order), taking
// at most `max_points` of them evenly spread (the cost is quadratic). 0 for
// fewer than two points or points that share one time.
double theil_sen_slope(std::span<const TrendPoint> points, std::size_t max_points = 32);

// Of the pairs of points whose y differ, the share where the later one is
// higher (Kendall's view of monotony; a flat stretch says nothing either
// way), over at most `max_points` points spread as above. 1 when no pair
// differs.
double rising_share(std::span<const TrendPoint> points, std::size_t max_points = 32);

}  // namespace kleak::core
