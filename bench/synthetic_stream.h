// A deterministic, kernel-like record stream for benchmarks: allocations from
// a few hundred call sites, most freed soon after on some CPU, a working set
// that stays outstanding. Timed as kleak.bpf.c times records: allocations
// read the clock, most frees carry their CPU's previous reading
// (KLEAK_TS_LOWER_BOUND), every KLEAK_FREES_PER_STAMP-th in a row reads it.
#pragma once

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "kleak_abi.h"

namespace kleak::bench {

struct RawRecord {
    unsigned cpu;
    std::uint16_t size;
    std::byte bytes[sizeof(kleak_alloc_record)];
};

// Records over `cpus` rings; about `live` allocations stay outstanding.
// Stateful, so a long stream can be produced in chunks.
class SyntheticStream {
public:
    SyntheticStream(unsigned cpus, std::size_t live, std::uint64_t seed = 42)
        : rng_(seed), cpus_(cpus), live_(live), last_reading_(cpus, 0), frees_since_reading_(cpus, 0) {
        outstanding_.reserve(live * 2);
    }

    std::vector<RawRecord> next(std::size_t count) {
        std::vector<RawRecord> out;
        out.reserve(count);
        while (out.size() < count) {
            ts_ += 50 + rng_() % 100;  // ~10M records per second of kernel time
            RawRecord r{static_cast<unsigned>(rng_() % cpus_), 0, {}};
            if (outstanding_.size() > live_ && rng_() % 2 == 0) {
                const std::size_t i = rng_() % outstanding_.size();
                kleak_free_record rec{{ts_, KLEAK_KFREE, 0, 1000}, outstanding_[i],
                                      0xffffffff81200000ULL + (rng_() % 256) * 64};
                if (last_reading_[r.cpu] != 0 && frees_since_reading_[r.cpu] < KLEAK_FREES_PER_STAMP) {
                    rec.hdr.ts_ns = last_reading_[r.cpu];
                    rec.hdr.flags = KLEAK_TS_LOWER_BOUND;
                    ++frees_since_reading_[r.cpu];
                } else {
                    last_reading_[r.cpu] = ts_;
                    frees_since_reading_[r.cpu] = 0;
                }
                outstanding_[i] = outstanding_.back();
                outstanding_.pop_back();
                std::memcpy(r.bytes, &rec, sizeof rec);
                r.size = sizeof rec;
            } else {
                const std::uint64_t ptr = next_ptr_;
                next_ptr_ += 64;
                const std::uint32_t req = 8 + static_cast<std::uint32_t>(rng_() % 500);
                kleak_alloc_record rec{{ts_, KLEAK_KMALLOC, 0, 1000}, ptr, 0xffffffff81000000ULL + (rng_() % 512) * 64,
                                       req, (req + 63) & ~63u, 0xcc0, 1001};
                outstanding_.push_back(ptr);
                last_reading_[r.cpu] = ts_;
                frees_since_reading_[r.cpu] = 0;
                std::memcpy(r.bytes, &rec, sizeof rec);
                r.size = sizeof rec;
            }
            out.push_back(r);
        }
        return out;
    }

private:
    std::mt19937_64 rng_;
    unsigned cpus_;
    std::size_t live_;
    std::vector<std::uint64_t> outstanding_;
    std::vector<std::uint64_t> last_reading_;  // per CPU
    std::vector<unsigned> frees_since_reading_;
    std::uint64_t ts_ = 1'000'000;
    std::uint64_t next_ptr_ = 0xffff888000000000ULL;
};

inline std::vector<RawRecord> synthetic_stream(std::size_t count, unsigned cpus, std::size_t live) {
    return SyntheticStream(cpus, live).next(count);
}

}  // namespace kleak::bench
