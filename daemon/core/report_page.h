// The data of the HTML leak report (`kleakctl report --html`, `kleakctl
// html`): one JSON object the page's template draws (service/html_report.h).
// Built from a snapshot document, as the `snapshot` query returns it or a
// snapshot file holds it, and the histories of the sites it plots, so the
// page from the daemon and the page from a file are the same page.
//
//   {"page_version": 1, "host", "kernel_release", "boot_id", "kleakd_version",
//    "time", "uptime_ns", "source", "totals", "losses",
//    "verdicts": {"samples", "growing", "interval_ns", "window_ns"},
//    "restart_s": -75.2 | null,
//    "flame": {"levels": ["allocator", "slab cache", "function", "call site"],
//              "stacks": [{"frames": ["kmalloc", "kmalloc-cg-1k", "alloc_pipe_info",
//                                     "alloc_pipe_info+0xd7"],
//                          "bytes": 102400, "count": 100, "verdict": "growing"}]},
//    "table": [{"site", "function", "cache", "family", "verdict", "reasons",
//               "outstanding", "outstanding_bytes", "growth_per_hour",
//               "growth_bytes_per_hour", "replaced", "plotted"}],
//    "table_total": 57,
//    "curves": [{"site", "function", "cache", "verdict", "outstanding",
//                "outstanding_bytes", "growth_per_hour",
//                "points": [[t_s, outstanding, bytes], ...]}]}
//
// Times are seconds before the snapshot (negative), so the page needs no
// clock. A flame stack lists its frames outermost first, as FlameGraph's
// folded stacks do; with no stacks taken, a call site's "stack" is its
// allocator, its slab cache, its function and itself. Stacks, when kleakd
// takes them, slot in as longer frame lists with the same weights.
#pragma once

#include <cstddef>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "history_section.h"
#include "site_history.h"

namespace kleak::core {

inline constexpr int kReportPageVersion = 1;

struct ReportPageOptions {
    std::size_t curves = 8;         // growth curves: the first sites in `suspects` order
    std::size_t table_rows = 1000;  // verdict table rows, the same order
    std::string source;             // where the data came from, for the page's header
};

// The sites with something outstanding, in `suspects` order (growing, young,
// reclaimable, steady, untracked-frees; then bytes gained per hour, then
// outstanding bytes): indexes into snapshot["sites"].
std::vector<std::size_t> suspects_order(const nlohmann::json& snapshot);

// The addresses ("0x...") of the sites the page plots: the first `curves`
// in suspects_order.
std::vector<std::string> sites_to_plot(const nlohmann::json& snapshot, std::size_t curves);

// One series from a site's tiers, oldest first: every point of the finest
// tier, and before its first point those of the coarser ones.
std::vector<HistoryPoint> merged_history(const HistoryTiers& tiers);

// A `history` query's points (its result's "points") as a tier.
std::vector<HistoryPoint> history_points_from_json(const nlohmann::json& history_result);

// Throws nlohmann::json::exception when `snapshot` is not a snapshot
// document (a missing or mistyped key).
nlohmann::json report_page_data(const nlohmann::json& snapshot, const SavedSites& histories,
                                const ReportPageOptions& options);

}  // namespace kleak::core
