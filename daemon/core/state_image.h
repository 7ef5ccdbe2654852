// The daemon's state as one binary image, so that a restarted kleakd goes on
// where the last one stopped (README "What survives what"): the tracker
// (every outstanding allocation and every site's aggregates), the printk
// window, and the site histories. Pure: the caller brings the host's
// identity and the clock, and keeps the bytes (a memfd in systemd's fd store,
// service/fd_store.h).
//
//   header, 32 bytes:  "KLEAKST\0", u32 format version, u32 KLEAK_ABI_VERSION,
//                      u64 payload bytes, u64 checksum of the payload
//   payload:           build id, boot id, kind (clean stop / checkpoint),
//                      written_ns, records, ring consumer positions,
//                      tracker (tracker_image.cpp), printk window, histories
//
// An image is refused, whole, with a one-line reason, when it does not fit:
// truncated, another magic or format version, a bad checksum, another record
// ABI (what its kinds and families mean may differ), another boot (KASLR
// moved every call site; the pointers are gone). The caller then starts
// fresh. Another build of the same format and ABI is accepted, so that a
// package upgrade keeps the state; its build id is reported. Integers are
// little-endian: an image never leaves its host.
//
// Size: 16 bytes per outstanding allocation, ~100 per site, ~16 per history
// point and the printk text: ~17 MB at 1M outstanding (bench_core measures
// the time to write and to load it).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "history_section.h"
#include "printk.h"
#include "tracker.h"

namespace kleak::core {

class SiteVerdicts;

inline constexpr std::uint32_t kStateFormatVersion = 1;
inline constexpr std::size_t kStateHeaderBytes = 32;

// Which daemon wrote an image: it is loaded only in the same boot; the
// build is told (an upgrade), not refused.
struct StateOrigin {
    std::string build_id;  // the daemon's version and its BPF object's (bpf_object_id())
    std::string boot_id;   // /proc/sys/kernel/random/boot_id
    bool operator==(const StateOrigin&) const = default;
};

enum class StateKind : std::uint8_t {
    clean_stop = 1,  // written on SIGTERM after the rings were drained: nothing consumed is missing
    checkpoint = 2,  // written while tracing: what was consumed after it is lost if the daemon dies
};
const char* state_kind_name(StateKind kind);

struct StateMeta {
    StateOrigin origin;
    StateKind kind = StateKind::checkpoint;
    std::uint64_t written_ns = 0;  // the records' clock (CLOCK_MONOTONIC)
    std::uint64_t records = 0;     // records the writer had consumed
    // Each ring's consumer position when the image was written (bytes, as
    // the kernel counts them); a restarted daemon that finds the rings
    // further on knows how much it consumed after the image and lost.
    std::vector<std::uint64_t> ring_positions;
};

// The image of the daemon's state. `printk` and `verdicts` may be null (not
// kept). Histories are saved by call-site address, as snapshots save them.
std::vector<std::byte> write_state_image(const StateMeta& meta, const Tracker& tracker, const PrintkLog* printk,
                                         const SiteVerdicts* verdicts);

struct LoadedState {
    std::optional<StateMeta> meta;  // nullopt: refused (error says why); tracker and printk are then empty
    std::string error;
    SavedSites histories;  // for SiteVerdicts::restore()
};

// Reads an image into `tracker` (which has seen no event; ages indexed or
// not, as the caller chose) and `printk` (may be null: its section is
// skipped). Never throws on bad input: refusal is the answer.
LoadedState read_state_image(std::span<const std::byte> image, const StateOrigin& here, Tracker& tracker,
                             PrintkLog* printk);

// The checksum the header carries: 64 bits over the payload, eight bytes a
// step (a few ms for a 16 MB image).
std::uint64_t state_checksum(std::span<const std::byte> bytes);

}  // namespace kleak::core
