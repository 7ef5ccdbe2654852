#include "kernel/ring_mapping.h"

#include <bpf/bpf.h>
#include <sys/mman.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <string>
#include <utility>

#include "kernel/startup_error.h"

namespace kleak {

namespace {

// A mapping that unmaps itself unless released: keeps the constructor's
// error paths from leaking the consumer page when the data mapping fails.
struct Mapping {
    void* address = MAP_FAILED;
    std::size_t length = 0;
    ~Mapping() {
        if (address != MAP_FAILED) ::munmap(address, length);
    }
    void* release() { return std::exchange(address, MAP_FAILED); }
};

std::string ring_name(unsigned cpu) { return "the ring of CPU " + std::to_string(cpu); }

}  // namespace

RingMapping::RingMapping(int ring_fd, unsigned cpu) {
    bpf_map_info info{};
    __u32 info_len = sizeof info;
    // bpf_obj_get_info_by_fd: libbpf 1.1 has no bpf_map_get_info_by_fd yet.
    if (bpf_obj_get_info_by_fd(ring_fd, &info, &info_len) != 0)
        throw StartupError(describe_errno("reading the size of " + ring_name(cpu) + " failed", -errno));
    page_size_ = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    size_ = info.max_entries;
    // The kernel creates no other ring (ringbuf_map_alloc); this catches a
    // wrong fd before it is mapped.
    if (info.type != BPF_MAP_TYPE_RINGBUF || !std::has_single_bit(size_) || size_ < page_size_)
        throw StartupError(ring_name(cpu) + " is not a BPF ring buffer of a power-of-two number of pages (map type " +
                           std::to_string(info.type) + ", " + std::to_string(size_) +
                           " bytes): this is a kleakd bug, please report it");

    // The kernel allows exactly one writable mapping: the consumer page, at
    // offset 0, one page long (ringbuf_map_mmap_kern).
    Mapping consumer{::mmap(nullptr, page_size_, PROT_READ | PROT_WRITE, MAP_SHARED, ring_fd, 0), page_size_};
    if (consumer.address == MAP_FAILED)
        throw StartupError(describe_errno("mapping the consumer position of " + ring_name(cpu) + " failed", -errno));

    // The producer page and the data area, read-only, the data area once: a
    // mapping shorter than libbpf's (which adds a second copy of the data
    // pages) is accepted by remap_vmalloc_range.
    const std::size_t length = page_size_ + size_;
    Mapping producer{::mmap(nullptr, length, PROT_READ, MAP_SHARED, ring_fd, static_cast<off_t>(page_size_)), length};
    if (producer.address == MAP_FAILED)
        throw StartupError(describe_errno("mapping the data of " + ring_name(cpu) + " (" + std::to_string(size_) +
                                              " bytes) failed",
                                          -errno));

    consumer_pos_ = static_cast<unsigned long*>(consumer.release());
    producer_pos_ = static_cast<const unsigned long*>(producer.release());
    data_ = reinterpret_cast<const std::byte*>(producer_pos_) + page_size_;
}

RingMapping::RingMapping(RingMapping&& other) noexcept
    : consumer_pos_(std::exchange(other.consumer_pos_, nullptr)),
      producer_pos_(std::exchange(other.producer_pos_, nullptr)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      page_size_(other.page_size_) {}

RingMapping::~RingMapping() {
    if (consumer_pos_) ::munmap(consumer_pos_, page_size_);
    if (producer_pos_) ::munmap(const_cast<unsigned long*>(producer_pos_), page_size_ + size_);
}

}  // namespace kleak
