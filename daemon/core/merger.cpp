#include "merger.h"

#include <algorithm>
#include <limits>

namespace kleak::core {

Merger::Merger(unsigned cpu_count) : queues_(cpu_count == 0 ? 1 : cpu_count) {}

void Merger::stage(const Event& event) {
    if (released_any_ && event.ts_ns <= released_watermark_) ++late_;
    // A record from a CPU we were not told about (hot-plugged CPU, corrupt
    // recording) still gets merged: it goes to the last queue rather than
    // being dropped.
    Queue& q = queues_[std::min<std::size_t>(event.cpu, queues_.size() - 1)];
    if (!q.events.empty() && event.ts_ns < q.events.back().ts_ns) q.sorted = false;
    q.events.push_back(event);
}

std::size_t Merger::staged() const {
    std::size_t n = 0;
    for (const Queue& q : queues_) n += q.events.size();
    return n;
}

std::size_t Merger::prepare_release(std::uint64_t& watermark) {
    if (released_any_ && watermark < released_watermark_) watermark = released_watermark_;
    // Each queue: sort if needed (stable: equal timestamps keep arrival order),
    // then find how much of it is ready.
    ready_.assign(queues_.size(), 0);
    pos_.assign(queues_.size(), 0);
    std::size_t total = 0;
    for (std::size_t i = 0; i < queues_.size(); ++i) {
        Queue& q = queues_[i];
        if (!q.sorted) {
            std::stable_sort(q.events.begin(), q.events.end(),
                             [](const Event& a, const Event& b) { return a.ts_ns < b.ts_ns; });
            q.sorted = true;
        }
        auto end = std::upper_bound(q.events.begin(), q.events.end(), watermark,
                                    [](std::uint64_t w, const Event& e) { return w < e.ts_ns; });
        ready_[i] = static_cast<std::size_t>(end - q.events.begin());
        total += ready_[i];
    }
    return total;
}

void Merger::finish_release(std::uint64_t watermark) {
    for (std::size_t i = 0; i < queues_.size(); ++i) {
        auto& events = queues_[i].events;
        events.erase(events.begin(), events.begin() + static_cast<std::ptrdiff_t>(ready_[i]));
    }
    released_watermark_ = watermark;
    released_any_ = true;
}

void Merger::release_until(std::uint64_t watermark, std::vector<Event>& out) {
    release_until(watermark, [&out](const Event& e) { out.push_back(e); });
}

void Merger::release_all(std::vector<Event>& out) {
    release_until(std::numeric_limits<std::uint64_t>::max(), out);
}

void Merger::reset() {
    for (Queue& q : queues_) {
        q.events.clear();
        q.sorted = true;
    }
    released_watermark_ = 0;
    released_any_ = false;
    late_ = 0;
}

}  // namespace kleak::core
