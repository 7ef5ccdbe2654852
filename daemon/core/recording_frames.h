// The frames of a per-CPU recording file (recording_format.h has the rest of
// the layout): after the file header, each record as (u32 length, record
// bytes), host byte order. Reading them is on replay's hot path, so it is
// inline here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

namespace kleak::core {

inline constexpr std::uint32_t kMaxFrameSize = 1u << 16;  // no record is near this

// Appends one frame to `out`.
inline void append_frame(std::vector<std::byte>& out, std::span<const std::byte> record) {
    const auto len = static_cast<std::uint32_t>(record.size());
    const std::size_t at = out.size();
    out.resize(at + sizeof len + record.size());
    std::memcpy(out.data() + at, &len, sizeof len);
    if (!record.empty()) std::memcpy(out.data() + at + sizeof len, record.data(), record.size());
}

enum class FrameStatus { ok, need_more, corrupt };

// Reads frames out of a buffer that may end mid-frame (streaming replay).
class FrameReader {
public:
    explicit FrameReader(std::span<const std::byte> bytes) : bytes_(bytes) {}
    FrameStatus next(std::span<const std::byte>& record) {
        std::uint32_t len = 0;
        if (bytes_.size() - pos_ < sizeof len) return FrameStatus::need_more;
        std::memcpy(&len, bytes_.data() + pos_, sizeof len);
        if (len > kMaxFrameSize) return FrameStatus::corrupt;
        if (bytes_.size() - pos_ - sizeof len < len) return FrameStatus::need_more;
        record = bytes_.subspan(pos_ + sizeof len, len);
        pos_ += sizeof len + len;
        return FrameStatus::ok;
    }
    std::size_t consumed() const { return pos_; }

private:
    std::span<const std::byte> bytes_;
    std::size_t pos_ = 0;
};

}  // namespace kleak::core
