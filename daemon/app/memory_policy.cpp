#include "app/memory_policy.h"

#include <malloc.h>

namespace kleak {

void return_freed_memory_promptly() {
    constexpr int kMmapThreshold = 256 * 1024;
    ::mallopt(M_MMAP_THRESHOLD, kMmapThreshold);  // cannot fail for this value
}

}  // namespace kleak
