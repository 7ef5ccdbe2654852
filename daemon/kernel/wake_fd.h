// A flag behind an eventfd: while raised, its fd stays readable. Raised from
// any thread (an eventfd write), lowered by the one that polls it. The loop
// polls such flags: it calls their handler once per turn, after whatever else
// is ready (work cut into slices continues so, after queries), and the ring
// readers wake it with one.
#pragma once

#include "kernel/unique_fd.h"

namespace kleak {

class WakeFd {
public:
    WakeFd();  // throws StartupError
    int fd() const { return fd_.get(); }
    void raise();
    void lower();

private:
    UniqueFd fd_;
};

}  // namespace kleak
