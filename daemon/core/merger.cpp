#include "merger.h"

#include <algorithm>

namespace kleak::core {

Merger::Merger(unsigned cpu_count) : queues_(cpu_count == 0 ? 1 : cpu_count) {}

// With per-CPU batches in BPF, a record that interrupted a kleak program
// reaches the ring ahead of its CPU's batch, so each batched record after it
// belongs a few places back. Putting it there now (after records with the
// same timestamp: arrival order is kept, as the stable sort would) keeps the
// queue sorted, instead of sorting the whole queue at the next release, which
// would run in one go before the first slice. Never before the records of a
// release in progress.
void Merger::stage_out_of_order(Queue& q, const Event& event) {
    if (q.sorted) {
        const std::size_t floor = releasing_ ? q.ready : q.head;
        const std::size_t from = q.events.size() - std::min(q.events.size() - floor, kInsertWindow);
        const auto first = q.events.begin() + static_cast<std::ptrdiff_t>(from);
        const auto at = std::upper_bound(first, q.events.end(), event.ts_ns,
                                         [](std::uint64_t ts, const Event& e) { return ts < e.ts_ns; });
        if (at != first || from == q.head) {
            q.events.insert(at, event);
            return;
        }
    }
    q.sorted = false;
    q.events.push_back(event);
}

void Merger::stage_from_one_cpu(std::span<const Event> events) {
    if (events.empty()) return;
    Queue& q = queues_[std::min<std::size_t>(events[0].cpu, queues_.size() - 1)];
    // What stage() would have found, record by record, without branches.
    std::uint64_t previous = q.held() == 0 ? events[0].ts_ns : q.events.back().ts_ns;
    bool in_order = true;
    std::uint64_t late = 0;
    for (const Event& e : events) {
        in_order &= e.ts_ns >= previous;
        late += e.ts_ns <= released_watermark_;
        previous = e.ts_ns;
    }
    if (!in_order) {  // the record-by-record path puts each one in its place
        for (const Event& e : events) stage(e);
        return;
    }
    if (released_any_) late_ += late;
    q.events.insert(q.events.end(), events.begin(), events.end());
}

std::size_t Merger::staged() const {
    std::size_t n = 0;
    for (const Queue& q : queues_) n += q.held();
    return n;
}

std::size_t Merger::staged_capacity() const {
    std::size_t n = 0;
    for (const Queue& q : queues_) n += q.events.capacity();
    return n;
}

void Merger::begin_release(std::uint64_t watermark) {
    if (releasing_) return;  // a precondition: finish the one in progress first
    if (released_any_ && watermark < released_watermark_) watermark = released_watermark_;
    // Each queue: sort if needed (stable: equal timestamps keep arrival order),
    // then find how much of it is ready.
    left_ = 0;
    for (Queue& q : queues_) {
        const auto held = q.events.begin() + static_cast<std::ptrdiff_t>(q.head);
        if (!q.sorted) {
            std::stable_sort(held, q.events.end(), [](const Event& a, const Event& b) { return a.ts_ns < b.ts_ns; });
            q.sorted = true;
        }
        auto end = std::upper_bound(held, q.events.end(), watermark,
                                    [](std::uint64_t w, const Event& e) { return w < e.ts_ns; });
        q.ready = static_cast<std::size_t>(end - q.events.begin());
        q.pos = q.head;
        // Released records still in front count: they are memory in use.
        q.demand = std::max(q.events.size(), q.demand - q.demand / 8);
        left_ += q.ready - q.head;
    }
    // From now on a record at or behind the watermark is late, exactly as
    // after a one-shot release: the records this release covers are fixed.
    released_watermark_ = watermark;
    released_any_ = true;
    releasing_ = true;
    if (left_ == 0) finish_release();
}

void Merger::finish_release() {
    for (std::size_t i = 0; i < queues_.size(); ++i) {
        Queue& q = queues_[i];
        q.head = q.ready;
        // Cut the released records off once they outnumber the held ones:
        // each record is then moved at most once on average.
        if (q.head > q.held()) {
            q.events.erase(q.events.begin(), q.events.begin() + static_cast<std::ptrdiff_t>(q.head));
            q.head = 0;
        }
        q.ready = q.pos = q.head;
        shrink_if_oversized(i);
    }
    releasing_ = false;
}

void Merger::shrink_if_oversized(std::size_t queue) {
    Queue& q = queues_[queue];
    const std::size_t demand = q.demand;
    if (q.events.capacity() <= kMinShrinkCapacity || q.events.capacity() <= kShrinkFactor * demand) return;
    std::vector<Event> smaller;
    smaller.reserve(std::max(2 * demand, kMinShrinkCapacity));
    smaller.assign(q.events.begin() + static_cast<std::ptrdiff_t>(q.head), q.events.end());
    q.events.swap(smaller);
    q.ready = q.pos = q.head = 0;
}

std::size_t Merger::release_some(std::span<Event> out) {
    const std::size_t room = std::min(out.size(), left_);
    std::size_t written = 0;
    while (written < room) {
        // Which queues still have records of this release: with one, its
        // ready records go out as they are; with two (every 2-CPU machine,
        // and the tail of most merges) a branch-free two-way merge; with more,
        // a run at a time.
        std::size_t active[2];
        std::size_t count = 0;
        for (std::size_t i = 0; i < queues_.size() && count < 3; ++i) {
            if (queues_[i].pos < queues_[i].ready) {
                if (count < 2) active[count] = i;
                ++count;
            }
        }
        Event* dst = out.data() + written;
        if (count == 1) {
            Queue& q = queues_[active[0]];
            const std::size_t n = std::min(room - written, q.ready - q.pos);
            std::copy_n(q.events.data() + q.pos, n, dst);
            q.pos += n;
            written += n;
        } else if (count == 2) {
            written += merge_two(active[0], active[1], dst, room - written);
        } else {
            written += merge_many(dst, room - written);
        }
    }
    left_ -= written;
    if (releasing_ && left_ == 0) finish_release();
    return written;
}

// Queue `a` has the lower index, so it wins ties. Stops when either side runs
// out (or the room does); the caller goes on with the other alone.
std::size_t Merger::merge_two(std::size_t a, std::size_t b, Event* out, std::size_t room) {
    Queue& qa = queues_[a];
    Queue& qb = queues_[b];
    const Event* pa = qa.events.data() + qa.pos;
    const Event* const ea = qa.events.data() + qa.ready;
    const Event* pb = qb.events.data() + qb.pos;
    const Event* const eb = qb.events.data() + qb.ready;
    Event* o = out;
    Event* const end = out + room;
    // Time order between two CPUs is a coin toss: choose by arithmetic rather
    // than a branch the predictor would miss half the time.
    while (o < end && pa < ea && pb < eb) {
        const bool take_a = pa->ts_ns <= pb->ts_ns;
        *o++ = *(take_a ? pa : pb);
        pa += take_a;
        pb += !take_a;
    }
    qa.pos = static_cast<std::size_t>(pa - qa.events.data());
    qb.pos = static_cast<std::size_t>(pb - qb.events.data());
    return static_cast<std::size_t>(o - out);
}

// One run: the records of the queue with the smallest head that stay ahead of
// the next smallest head. CPU counts are small (tens to hundreds), so a
// linear scan for the two smallest heads beats a heap's bookkeeping. Ties go
// to the lower CPU. "No candidate" is tracked by index, not by a UINT64_MAX
// timestamp sentinel: a record may legitimately carry that timestamp.
std::size_t Merger::merge_many(Event* out, std::size_t room) {
    const std::size_t n = queues_.size();
    const std::size_t none = n;
    std::size_t best = none, next = none;
    std::uint64_t best_ts = 0, next_ts = 0;
    for (std::size_t i = 0; i < n; ++i) {
        const Queue& q = queues_[i];
        if (q.pos >= q.ready) continue;
        const std::uint64_t ts = q.events[q.pos].ts_ns;
        if (best == none || ts < best_ts) {
            next = best;
            next_ts = best_ts;
            best = i;
            best_ts = ts;
        } else if (next == none || ts < next_ts) {
            next = i;
            next_ts = ts;
        }
    }
    Queue& q = queues_[best];
    const Event* events = q.events.data();
    const std::size_t start = q.pos;
    const std::size_t end = std::min(q.ready, start + room);
    std::size_t p = start + 1;
    while (p < end && (events[p].ts_ns < next_ts || (events[p].ts_ns == next_ts && best < next))) ++p;
    std::copy(events + start, events + p, out);
    q.pos = p;
    return p - start;
}

void Merger::release_until(std::uint64_t watermark, std::vector<Event>& out) {
    // Written in place, a chunk at a time: `out` grows only by what is left.
    auto release_rest = [&] {
        while (releasing_) {
            const std::size_t at = out.size();
            out.resize(at + left_);
            out.resize(at + release_some(std::span(out).subspan(at)));
        }
    };
    release_rest();
    begin_release(watermark);
    release_rest();
}

void Merger::release_all(std::vector<Event>& out) {
    release_until(std::numeric_limits<std::uint64_t>::max(), out);
}

void Merger::reset() {
    for (Queue& q : queues_) {
        q.events.clear();
        q.head = 0;
        q.sorted = true;
        q.ready = q.pos = 0;
        q.demand = 0;
        shrink_if_oversized(static_cast<std::size_t>(&q - queues_.data()));
    }
    released_watermark_ = 0;
    released_any_ = false;
    releasing_ = false;
    left_ = 0;
    late_ = 0;
}

}  // namespace kleak::core
