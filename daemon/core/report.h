// The kleak report: what the seed's post-processing script printed, built
// from the tracker's aggregates, plus honest loss accounting. Symbolization
// happens here, at report time, for the sites the report shows.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "sizes.h"
#include "symbolizer.h"
#include "tracker.h"

namespace kleak::core {

// What one BPF program cost and missed (the kernel's bpf_prog_info).
struct ProgramCost {
    std::string name;                    // "kmem:kmalloc"
    std::uint64_t run_cnt = 0;           // 0 unless kernel.bpf_stats_enabled=1
    std::uint64_t run_time_ns = 0;       // ditto
    std::uint64_t recursion_misses = 0;  // runs skipped because the program nested on its CPU: lost events
};

struct Losses {
    std::vector<std::uint64_t> dropped_per_cpu;  // ring reserve failures
    std::vector<std::uint64_t> dropped_per_family;  // the same by family (Family order); empty: not known
    std::uint64_t late = 0;                      // released behind the watermark
    std::uint64_t undecodable = 0;               // short / unknown records
    std::uint64_t buffer_size = 0;               // per-CPU ring bytes in force
    std::uint64_t suggested_buffer_size = 0;     // 0: no overflow, no advice
    std::vector<ProgramCost> programs;           // empty for a replayed recording
    // A restarted daemon (README "What survives what"): how long nothing was
    // traced between the state it resumed from and its attach. 0: none.
    std::uint64_t untraced_gap_ns = 0;

    std::uint64_t dropped() const;
    std::uint64_t recursion_misses() const;
};

// Fills in the buffer-size advice from how full the rings got.
Losses make_losses(std::vector<std::uint64_t> dropped_per_cpu, std::uint64_t late, std::uint64_t undecodable,
                   std::uint64_t buffer_size, std::uint64_t peak_backlog_bytes, std::vector<ProgramCost> programs = {});

struct SiteRow {
    std::string site;      // function+0xoff [module]
    std::string function;  // bare symbol, or the hex address when unknown
    SiteStats stats;
};

struct Report {
    Totals totals;
    std::vector<SiteRow> sites;  // every site, by outstanding bytes, then bytes allocated
    Losses losses;
};

Report build_report(const Tracker& tracker, const Losses& losses, Symbolizer& symbolizer);

// The `top` sites by outstanding bytes only: for the periodic live table,
// symbolizing just what is shown.
std::vector<SiteRow> top_sites_by_outstanding(const Tracker& tracker, std::size_t top, Symbolizer& symbolizer);

nlohmann::json report_to_json(const Report& report);
// The inverse, for clients that print a report they received as JSON.
// Throws nlohmann::json::exception on a document of another shape.
Report report_from_json(const nlohmann::json& json);

// `top` bounds every per-caller section (0 = all rows).
std::string report_to_text(const Report& report, std::size_t top);

// Periodic table: outstanding count/bytes, allocs, frees per site.
std::string top_table_text(const std::vector<SiteRow>& rows);

}  // namespace kleak::core
