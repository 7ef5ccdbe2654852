// The site histories a snapshot carries (its "history" section), so that a
// restarted daemon keeps them (README "Verdicts"). Pure: the caller brings
// the host's identity and does the file I/O.
//
//   "history": {"version": 1, "boot_id": "...", "kernel_release": "6.18.0",
//               "interval_ns": 10000000000,
//               "sites": [{"site_address": "0xffffffff81234567",
//                          "tiers": [[[t_ms, outstanding, bytes], ...], [...], [...], [...]]}]}
//
// Only snapshot files carry it (the `snapshot` query leaves it out: only a
// restarted daemon needs it, and it can run to tens of MiB).
//
// One entry per call site with any points, its kHistoryTiers oldest first;
// t_ms is CLOCK_MONOTONIC in ms, the records' clock. A site is named by its
// address, not its SiteId (the tracker's ids are dense and start again with
// every daemon), and an address means the same site only within one boot
// (KASLR), hence boot_id. About 25 bytes of JSON a point: 2.7 KB a site
// after 15 minutes at the default 10 s interval (91 + 15 + 2 + 1 points),
// 9 KB after a day, at most 18 KB (kMaxHistoryPoints, after 30 days).
#pragma once

#include <absl/container/flat_hash_map.h>

#include <cstdint>
#include <istream>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>

#include "site_history.h"
#include "tracker.h"

namespace kleak::core {

class SiteVerdicts;

inline constexpr int kHistorySectionVersion = 1;
// More sites than any kernel has call sites: a section claiming more is refused.
inline constexpr std::size_t kMaxSavedSites = std::size_t{1} << 20;

// Where and how histories were sampled; they carry over only when all agree.
struct HistoryOrigin {
    std::string boot_id;
    std::string kernel_release;
    std::uint64_t interval_ns = 0;
};

// Histories by call-site address.
using SavedSites = absl::flat_hash_map<std::uint64_t, HistoryTiers>;

struct SavedHistories {
    HistoryOrigin origin;
    SavedSites sites;
};

// The section's text for a snapshot file (core/snapshot.h puts it in), one
// line a site: every site `verdicts` holds points of, those the tracker knows
// (`sites`, Tracker::sites()) and those restored at start-up that have not
// allocated since (kept for the next restart). Written straight as text: a
// JSON tree of it would take four times the memory, every snapshot.
std::string history_section_text(const SiteVerdicts& verdicts, std::span<const SiteStats> sites,
                                 const HistoryOrigin& here);

// A section read back, or why not (naming the offending key, e.g.
// "history.sites[3].tiers[0][7]"). Never throws: a damaged or foreign file
// is refused, not trusted.
struct ParsedHistorySection {
    std::optional<SavedHistories> histories;
    std::string error;
    bool missing = false;  // a snapshot without the section: written by an older kleakd
};
ParsedHistorySection parse_history_section(const nlohmann::json& section);

// The section of a whole snapshot document, read from its text. Only the
// section is kept, and each site is converted as soon as it is read: a large
// snapshot costs about what its histories hold (24 bytes a point), not a
// JSON tree of it (about 100 bytes a point), nor of its report. The stream is
// the caller's (the core does no I/O).
ParsedHistorySection read_history_section(std::istream& snapshot);

// Why histories saved at `saved` cannot continue here (another boot or
// kernel, another sampling interval); nullopt when they can.
std::optional<std::string> why_not_restore(const HistoryOrigin& saved, const HistoryOrigin& here);

}  // namespace kleak::core
