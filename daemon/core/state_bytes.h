// Little-endian bytes in and out, for the daemon's state image
// (state_image.h). The reader never reads past its end and never throws: a
// short or damaged image makes it fail once and then return zeros, so a
// decoder checks ok() at the end (and before trusting a count it sizes
// memory by) instead of after every field.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace kleak::core {

class ByteWriter {
public:
    void u8(std::uint8_t v) { bytes_.push_back(static_cast<std::byte>(v)); }
    void u32(std::uint32_t v) { put(&v, sizeof v); }
    void u64(std::uint64_t v) { put(&v, sizeof v); }
    void str(std::string_view s) {
        u32(static_cast<std::uint32_t>(s.size()));
        put(s.data(), s.size());
    }
    void reserve(std::size_t n) { bytes_.reserve(n); }
    std::size_t size() const { return bytes_.size(); }
    // Overwrites 8 bytes written before (a length or checksum known later).
    void patch_u64(std::size_t at, std::uint64_t v) { std::memcpy(bytes_.data() + at, &v, sizeof v); }
    std::span<const std::byte> bytes() const { return bytes_; }
    std::vector<std::byte> take() { return std::move(bytes_); }

private:
    // Little-endian hosts only (x86-64, arm64): the image never leaves the host.
    void put(const void* p, std::size_t n) {
        const auto* b = static_cast<const std::byte*>(p);
        bytes_.insert(bytes_.end(), b, b + n);
    }
    std::vector<std::byte> bytes_;
};

class ByteReader {
public:
    explicit ByteReader(std::span<const std::byte> bytes) : bytes_(bytes) {}

    std::uint8_t u8() {
        std::uint8_t v = 0;
        get(&v, sizeof v);
        return v;
    }
    std::uint32_t u32() {
        std::uint32_t v = 0;
        get(&v, sizeof v);
        return v;
    }
    std::uint64_t u64() {
        std::uint64_t v = 0;
        get(&v, sizeof v);
        return v;
    }
    std::string str() {
        const std::uint32_t n = u32();
        if (!fits(n)) return {};
        std::string s(reinterpret_cast<const char*>(bytes_.data() + at_), n);
        at_ += n;
        return s;
    }
    // Whether `count` items of at least `min_bytes` each can still follow:
    // checked before reserving memory for a count read from the image.
    bool can_hold(std::uint64_t count, std::size_t min_bytes) {
        if (ok_ && count <= remaining() / min_bytes) return true;
        ok_ = false;
        return false;
    }
    bool ok() const { return ok_; }
    void fail() { ok_ = false; }
    std::size_t remaining() const { return bytes_.size() - at_; }

private:
    bool fits(std::size_t n) {
        if (ok_ && n <= remaining()) return true;
        ok_ = false;
        return false;
    }
    void get(void* p, std::size_t n) {
        if (!fits(n)) return;
        std::memcpy(p, bytes_.data() + at_, n);
        at_ += n;
    }
    std::span<const std::byte> bytes_;
    std::size_t at_ = 0;
    bool ok_ = true;
};

}  // namespace kleak::core
