// The daemon's core::PartRunner: the parts of a query that reads every live
// allocation (`leaks --min-age`) run on threads of their own. The loop thread
// runs part 0 itself and waits for the rest, so nothing changes the tracker
// while they read it. Threads are started per query rather than kept in a
// pool: a scan takes milliseconds, a thread starts in tens of microseconds,
// and nothing idles between queries. They inherit the loop thread's
// priority (nice -10 in kleakd.service), as the scan is the loop's work.
#pragma once

#include "core/part_runner.h"

namespace kleak {

class ScanThreads final : public core::PartRunner {
public:
    // At most 4: a query should not take more of a large host than that
    // (measured here: 2 threads halve the scan; more CPUs were not at hand).
    static constexpr std::size_t kMaxWidth = 4;

    // width 0: the CPUs the calling thread may run on, at most kMaxWidth.
    explicit ScanThreads(std::size_t width = 0);

    std::size_t width() const override { return width_; }
    // A part whose thread cannot be started (EAGAIN) runs on the calling
    // thread after part 0: slower, never lost.
    void run(std::size_t parts, const std::function<void(std::size_t)>& part) const override;

private:
    std::size_t width_;
};

}  // namespace kleak
