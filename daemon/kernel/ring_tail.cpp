#include "kernel/ring_tail.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "kernel/bpf_tracer.h"
#include "kernel/host_info.h"

namespace kleak {

namespace {

constexpr char kMagic[8] = {'K', 'L', 'K', 'T', 'A', 'I', 'L', '1'};
constexpr std::uint32_t kEndMark = 0xffffffffu;

struct SegmentHeader {
    std::uint32_t cpu;
    std::uint32_t zero;
    std::uint64_t length;
};

// Reads what the writer wrote, bounds-checked.
class Cursor {
public:
    explicit Cursor(std::span<const std::byte> bytes) : bytes_(bytes) {}
    template <typename T>
    bool read(T& out) {
        if (bytes_.size() - at_ < sizeof out) return false;
        std::memcpy(&out, bytes_.data() + at_, sizeof out);
        at_ += sizeof out;
        return true;
    }
    std::optional<std::span<const std::byte>> take(std::uint64_t n) {
        if (bytes_.size() - at_ < n) return std::nullopt;
        const auto part = bytes_.subspan(at_, n);
        at_ += n;
        return part;
    }

private:
    std::span<const std::byte> bytes_;
    std::size_t at_ = 0;
};

}  // namespace

RingTailWriter::RingTailWriter() : fd_(::memfd_create("kleakd-ring-tail", MFD_CLOEXEC | MFD_ALLOW_SEALING)) {
    if (!fd_) {
        error_ = std::string("memfd_create: ") + std::strerror(errno);
        return;
    }
    const std::string identity = bpf_records_identity();
    const auto length = static_cast<std::uint32_t>(identity.size());
    write(kMagic, sizeof kMagic);
    write(&length, sizeof length);
    write(identity.data(), identity.size());
}

void RingTailWriter::write(const void* data, std::size_t size) {
    const auto* bytes = static_cast<const char*>(data);
    while (error_.empty() && size > 0) {
        const ssize_t n = ::write(fd_.get(), bytes, size);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            error_ = std::string("writing the ring tail: ") + std::strerror(errno);
            return;
        }
        bytes += n;
        size -= static_cast<std::size_t>(n);
    }
}

void RingTailWriter::append(RingConsumer& consumer) {
    for (unsigned cpu = 0; cpu < consumer.ring_count() && error_.empty(); ++cpu) {
        consumer.take_copies(cpu, taken_);
        if (taken_.size() == 0) continue;
        const SegmentHeader header{cpu, 0, taken_.size()};
        write(&header, sizeof header);
        write(taken_.bytes().data(), taken_.size());
        bytes_ += taken_.size();
    }
    taken_.clear_for_reuse();
}

UniqueFd RingTailWriter::finish(RingConsumer& consumer) {
    append(consumer);
    const std::uint32_t end[2] = {kEndMark, static_cast<std::uint32_t>(consumer.ring_count())};
    write(end, sizeof end);
    const std::uint64_t now = monotonic_now_ns();
    write(&now, sizeof now);
    for (unsigned cpu = 0; cpu < consumer.ring_count(); ++cpu) {
        const std::uint64_t position = consumer.consumer_position(cpu);
        write(&position, sizeof position);
    }
    if (!error_.empty()) return UniqueFd();
    ::fcntl(fd_.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL);
    return std::move(fd_);
}

TailLoad load_ring_tail(int fd, RingConsumer& consumer) {
    struct stat st {};
    if (::fstat(fd, &st) != 0) return {0, std::string("fstat: ") + std::strerror(errno)};
    const auto size = static_cast<std::size_t>(st.st_size);
    if (size < sizeof kMagic) return {0, "it is shorter than its header"};
    void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) return {0, std::string("mmap: ") + std::strerror(errno)};
    const std::unique_ptr<void, std::function<void(void*)>> unmap(map, [size](void* p) { ::munmap(p, size); });
    Cursor in({static_cast<const std::byte*>(map), size});

    char magic[sizeof kMagic];
    std::uint32_t identity_length = 0;
    if (!in.read(magic) || std::memcmp(magic, kMagic, sizeof kMagic) != 0 || !in.read(identity_length))
        return {0, "it is not a ring tail of this format"};
    const auto identity = in.take(identity_length);
    const std::string here = bpf_records_identity();
    if (!identity || std::string(reinterpret_cast<const char*>(identity->data()), identity->size()) != here)
        return {0, "it holds records of another ABI or object"};
    std::vector<std::vector<std::span<const std::byte>>> segments(consumer.ring_count());
    std::uint64_t bytes = 0;
    for (;;) {
        std::uint32_t cpu = 0;
        if (!in.read(cpu)) return {0, "it is truncated"};
        if (cpu == kEndMark) break;
        SegmentHeader header{cpu, 0, 0};
        if (!in.read(header.zero) || !in.read(header.length)) return {0, "it is truncated"};
        const auto segment = in.take(header.length);
        if (!segment || cpu >= segments.size()) return {0, "a segment is truncated or names no ring here"};
        segments[cpu].push_back(*segment);
        bytes += segment->size();
    }
    std::uint32_t rings = 0;
    std::uint64_t read_until_ns = 0;
    if (!in.read(rings) || rings != consumer.ring_count()) return {0, "it was written for another number of rings"};
    if (!in.read(read_until_ns)) return {0, "it is truncated"};
    for (unsigned cpu = 0; cpu < rings; ++cpu) {
        std::uint64_t position = 0;
        if (!in.read(position)) return {0, "it is truncated"};
        if (position != consumer.consumer_position(cpu))
            return {0, "the ring of CPU " + std::to_string(cpu) + " was consumed past it since it was written"};
    }
    for (unsigned cpu = 0; cpu < rings; ++cpu)
        for (const auto& segment : segments[cpu])
            if (!RingConsumer::whole_copies(segment)) return {0, "a segment of CPU " + std::to_string(cpu) + " is damaged"};
    for (unsigned cpu = 0; cpu < rings; ++cpu)
        for (const auto& segment : segments[cpu]) consumer.preload(cpu, segment);
    return {bytes, std::nullopt, read_until_ns};
}

}  // namespace kleak
