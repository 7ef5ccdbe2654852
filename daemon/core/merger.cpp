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

void Merger::release_until(std::uint64_t watermark, std::vector<Event>& out) {
    if (released_any_ && watermark < released_watermark_) watermark = released_watermark_;

    // Each queue: sort if needed (stable: equal timestamps keep arrival order),
    // then find how much of it is ready.
    std::vector<std::size_t> ready(queues_.size());
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
        ready[i] = static_cast<std::size_t>(end - q.events.begin());
        total += ready[i];
    }

    out.reserve(out.size() + total);
    // K-way merge of the ready prefixes. CPU counts are small (tens to
    // hundreds) and one queue usually runs ahead for many records, so a linear
    // scan for the minimum head beats a heap's bookkeeping.
    std::vector<std::size_t> pos(queues_.size(), 0);
    // "No candidate" is tracked by index, not by a UINT64_MAX timestamp
    // sentinel: a record may legitimately carry that timestamp (release_all
    // releases everything), and a sentinel would then select no queue at all.
    const std::size_t none = queues_.size();
    for (std::size_t left = total; left > 0; --left) {
        std::size_t best = none;
        std::uint64_t best_ts = 0;
        for (std::size_t i = 0; i < queues_.size(); ++i) {
            if (pos[i] < ready[i] && (best == none || queues_[i].events[pos[i]].ts_ns < best_ts)) {
                best = i;
                best_ts = queues_[i].events[pos[i]].ts_ns;
            }
        }
        // Copy the whole run of this queue that stays ahead of every other
        // queue's head, ordering by (timestamp, CPU) so ties go to the lower CPU.
        std::uint64_t next_ts = std::numeric_limits<std::uint64_t>::max();
        std::size_t next_cpu = none;
        for (std::size_t i = 0; i < queues_.size(); ++i) {
            if (i == best || pos[i] >= ready[i]) continue;
            const std::uint64_t ts = queues_[i].events[pos[i]].ts_ns;
            if (next_cpu == none || ts < next_ts) {
                next_ts = ts;
                next_cpu = i;
            }
        }
        const auto& events = queues_[best].events;
        std::size_t p = pos[best];
        do {
            out.push_back(events[p]);
            ++p;
        } while (p < ready[best] &&
                 (events[p].ts_ns < next_ts || (events[p].ts_ns == next_ts && best < next_cpu)));
        left -= (p - pos[best]) - 1;
        pos[best] = p;
    }

    for (std::size_t i = 0; i < queues_.size(); ++i) {
        auto& events = queues_[i].events;
        events.erase(events.begin(), events.begin() + static_cast<std::ptrdiff_t>(ready[i]));
    }
    released_watermark_ = watermark;
    released_any_ = true;
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
