// How a query that reads every live allocation (Tracker::outstanding_born_by,
// 32 MiB at 1M outstanding) spreads its work. The core starts no threads:
// this runner calls the parts one after another; the daemon passes one that
// runs them at once (app/scan_threads.h) while its loop waits for the answer.
#pragma once

#include <cstddef>
#include <functional>

namespace kleak::core {

class PartRunner {
public:
    virtual ~PartRunner() = default;
    // How many parts run() can run at once: callers split their work in as many.
    virtual std::size_t width() const { return 1; }
    // Calls part(0) .. part(parts - 1) and returns once all have returned
    // (rethrowing the first exception a part threw). Parts must not share
    // mutable state.
    virtual void run(std::size_t parts, const std::function<void(std::size_t)>& part) const {
        for (std::size_t i = 0; i < parts; ++i) part(i);
    }
};

}  // namespace kleak::core
