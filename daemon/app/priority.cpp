#include "app/priority.h"

#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include <cerrno>
#include <cstring>

namespace kleak {

void raise_priority_to(int nice) {
    errno = 0;
    const int current = ::getpriority(PRIO_PROCESS, 0);
    if (errno != 0 || current <= nice) return;
    if (::setpriority(PRIO_PROCESS, 0, nice) != 0) {
        spdlog::warn("cannot raise kleakd's priority to nice {} ({}): when the traced load saturates every CPU, "
                     "the rings may overflow; run as root or with CAP_SYS_NICE, or pass --nice {} to stop trying",
                     nice, std::strerror(errno), current);
    }
}

}  // namespace kleak
