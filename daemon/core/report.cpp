#include "report.h"

#include <algorithm>
#include <cstdio>
#include <functional>
#include <numeric>

#include "kleak_abi.h"

namespace kleak::core {

std::uint64_t Losses::dropped() const {
    return std::accumulate(dropped_per_cpu.begin(), dropped_per_cpu.end(), std::uint64_t{0});
}

std::uint64_t Losses::recursion_misses() const {
    std::uint64_t n = 0;
    for (const ProgramCost& p : programs) n += p.recursion_misses;
    return n;
}

Losses make_losses(std::vector<std::uint64_t> dropped_per_cpu, std::uint64_t late, std::uint64_t undecodable,
                   std::uint64_t buffer_size, std::uint64_t peak_backlog_bytes, std::vector<ProgramCost> programs) {
    Losses losses;
    losses.dropped_per_cpu = std::move(dropped_per_cpu);
    losses.late = late;
    losses.undecodable = undecodable;
    losses.buffer_size = buffer_size;
    losses.programs = std::move(programs);
    // The largest record plus its 8-byte ring header: advice errs large.
    constexpr std::uint64_t bytes_per_record = sizeof(kleak_cache_alloc_record) + 8;
    losses.suggested_buffer_size =
        suggest_buffer_size(buffer_size, peak_backlog_bytes, losses.dropped(), bytes_per_record);
    return losses;
}

namespace {

SiteRow make_row(const SiteStats& stats, Symbolizer& symbolizer) {
    const Symbol symbol = symbolizer.resolve(stats.call_site);
    std::string site = format_site(stats.call_site, symbol);
    std::string function = symbol.known() ? symbol.function : site;
    return SiteRow{std::move(site), std::move(function), stats};
}

bool by_outstanding(const SiteStats& a, const SiteStats& b) {
    if (a.outstanding_bytes != b.outstanding_bytes) return a.outstanding_bytes > b.outstanding_bytes;
    if (a.bytes_alloc != b.bytes_alloc) return a.bytes_alloc > b.bytes_alloc;
    return a.call_site < b.call_site;
}

}  // namespace

Report build_report(const Tracker& tracker, const Losses& losses, Symbolizer& symbolizer) {
    std::vector<SiteStats> sorted = tracker.sites();
    std::sort(sorted.begin(), sorted.end(), by_outstanding);
    Report report{tracker.totals(), {}, losses};
    report.sites.reserve(sorted.size());
    for (const SiteStats& s : sorted) report.sites.push_back(make_row(s, symbolizer));
    return report;
}

std::vector<SiteRow> top_sites_by_outstanding(const Tracker& tracker, std::size_t top, Symbolizer& symbolizer) {
    std::vector<SiteStats> sorted;
    for (const SiteStats& s : tracker.sites())
        if (s.outstanding > 0) sorted.push_back(s);
    const std::size_t n = std::min(top, sorted.size());
    std::partial_sort(sorted.begin(), sorted.begin() + static_cast<std::ptrdiff_t>(n), sorted.end(), by_outstanding);
    std::vector<SiteRow> rows;
    for (std::size_t i = 0; i < n; ++i) rows.push_back(make_row(sorted[i], symbolizer));
    return rows;
}

nlohmann::json report_to_json(const Report& report) {
    using nlohmann::json;
    const Totals& t = report.totals;
    const Losses& l = report.losses;
    json out;
    out["totals"] = {
        {"allocs", t.allocs},
        {"frees", t.frees},
        {"bytes_alloc", t.bytes_alloc},
        {"bytes_req", t.bytes_req},
        {"bytes_freed", t.bytes_freed},
        {"unmatched_frees", t.unmatched_frees},
        {"replaced", t.replaced},
        {"reordered_frees", t.reordered_frees},
        {"outstanding", t.outstanding},
        {"outstanding_bytes", t.outstanding_bytes},
        {"dropped", l.dropped()},
        {"late", l.late},
    };
    // Per family, from the sites (every site is in a report).
    json families = json::object();
    for (const Family f : kFamilies) {
        Totals ft;
        for (const SiteRow& row : report.sites) {
            if (row.stats.family != f) continue;
            ft.allocs += row.stats.allocs;
            ft.frees += row.stats.frees;
            ft.bytes_alloc += row.stats.bytes_alloc;
            ft.unmatched_frees += row.stats.unmatched_frees;
            ft.outstanding += row.stats.outstanding;
            ft.outstanding_bytes += row.stats.outstanding_bytes;
        }
        json fj = {{"allocs", ft.allocs},
                   {"frees", ft.frees},
                   {"bytes_alloc", ft.bytes_alloc},
                   {"unmatched_frees", ft.unmatched_frees},
                   {"outstanding", ft.outstanding},
                   {"outstanding_bytes", ft.outstanding_bytes}};
        if (static_cast<std::size_t>(f) < l.dropped_per_family.size())
            fj["dropped"] = l.dropped_per_family[static_cast<std::size_t>(f)];
        families[std::string(family_name(f))] = std::move(fj);
    }
    out["families"] = std::move(families);
    json sites = json::array();
    json unmatched = json::array();
    for (const SiteRow& row : report.sites) {
        const SiteStats& s = row.stats;
        sites.push_back({
            {"family", family_name(s.family)},
            {"site", row.site},
            {"function", row.function},
            {"address", hex_address(s.call_site)},  // a string: JSON numbers lose precision past 2^53
            {"allocs", s.allocs},
            {"frees", s.frees},
            {"bytes_alloc", s.bytes_alloc},
            {"bytes_req", s.bytes_req},
            {"bytes_freed", s.bytes_freed},
            {"replaced", s.replaced},
            {"outstanding", s.outstanding},
            {"outstanding_bytes", s.outstanding_bytes},
            {"free_calls", s.free_calls},
            {"unmatched_frees", s.unmatched_frees},
        });
    }
    std::vector<const SiteRow*> by_unmatched;
    for (const SiteRow& row : report.sites)
        if (row.stats.unmatched_frees > 0) by_unmatched.push_back(&row);
    std::stable_sort(by_unmatched.begin(), by_unmatched.end(), [](const SiteRow* a, const SiteRow* b) {
        return a->stats.unmatched_frees > b->stats.unmatched_frees;
    });
    for (const SiteRow* row : by_unmatched)
        unmatched.push_back({{"family", family_name(row->stats.family)},
                             {"site", row->site},
                             {"function", row->function},
                             {"count", row->stats.unmatched_frees}});
    out["sites"] = std::move(sites);
    out["unmatched_frees"] = std::move(unmatched);
    out["losses"] = {
        {"dropped", l.dropped()},
        {"dropped_per_cpu", l.dropped_per_cpu},
        {"dropped_per_family", l.dropped_per_family},
        {"late", l.late},
        {"undecodable", l.undecodable},
        {"buffer_size", l.buffer_size},
        {"suggested_buffer_size", l.suggested_buffer_size},
        {"recursion_misses", l.recursion_misses()},
    };
    if (l.untraced_gap_ns > 0) out["losses"]["untraced_gap_ns"] = l.untraced_gap_ns;
    if (!l.programs.empty()) {
        nlohmann::json programs = nlohmann::json::array();
        for (const ProgramCost& p : l.programs) {
            nlohmann::json program = {{"name", p.name},
                                      {"run_cnt", p.run_cnt},
                                      {"run_time_ns", p.run_time_ns},
                                      {"recursion_misses", p.recursion_misses}};
            if (p.run_cnt > 0)
                program["ns_per_run"] = static_cast<double>(p.run_time_ns) / static_cast<double>(p.run_cnt);
            programs.push_back(std::move(program));
        }
        out["losses"]["programs"] = std::move(programs);
    }
    return out;
}

Report report_from_json(const nlohmann::json& json) {
    Report report;
    const auto& t = json.at("totals");
    Totals& totals = report.totals;
    totals.allocs = t.at("allocs").get<std::uint64_t>();
    totals.frees = t.at("frees").get<std::uint64_t>();
    totals.bytes_alloc = t.at("bytes_alloc").get<std::uint64_t>();
    totals.bytes_req = t.at("bytes_req").get<std::uint64_t>();
    totals.bytes_freed = t.at("bytes_freed").get<std::uint64_t>();
    totals.unmatched_frees = t.at("unmatched_frees").get<std::uint64_t>();
    totals.replaced = t.at("replaced").get<std::uint64_t>();
    totals.reordered_frees = t.value("reordered_frees", std::uint64_t{0});  // absent in documents older than this field
    totals.outstanding = t.at("outstanding").get<std::uint64_t>();
    totals.outstanding_bytes = t.at("outstanding_bytes").get<std::uint64_t>();
    for (const auto& s : json.at("sites")) {
        SiteRow row{s.at("site").get<std::string>(), s.at("function").get<std::string>(), {}};
        SiteStats& stats = row.stats;
        stats.call_site = std::stoull(s.at("address").get<std::string>(), nullptr, 16);
        // Absent in documents from before families: slab.
        stats.family = parse_family(s.value("family", std::string("slab"))).value_or(Family::slab);
        stats.allocs = s.at("allocs").get<std::uint64_t>();
        stats.frees = s.at("frees").get<std::uint64_t>();
        stats.bytes_alloc = s.at("bytes_alloc").get<std::uint64_t>();
        stats.bytes_req = s.at("bytes_req").get<std::uint64_t>();
        stats.bytes_freed = s.at("bytes_freed").get<std::uint64_t>();
        stats.replaced = s.at("replaced").get<std::uint64_t>();
        stats.outstanding = s.at("outstanding").get<std::uint64_t>();
        stats.outstanding_bytes = s.at("outstanding_bytes").get<std::uint64_t>();
        stats.free_calls = s.at("free_calls").get<std::uint64_t>();
        stats.unmatched_frees = s.at("unmatched_frees").get<std::uint64_t>();
        report.sites.push_back(std::move(row));
    }
    const auto& l = json.at("losses");
    report.losses.dropped_per_cpu = l.at("dropped_per_cpu").get<std::vector<std::uint64_t>>();
    if (l.contains("dropped_per_family"))
        report.losses.dropped_per_family = l.at("dropped_per_family").get<std::vector<std::uint64_t>>();
    report.losses.late = l.at("late").get<std::uint64_t>();
    report.losses.undecodable = l.at("undecodable").get<std::uint64_t>();
    report.losses.buffer_size = l.at("buffer_size").get<std::uint64_t>();
    report.losses.suggested_buffer_size = l.at("suggested_buffer_size").get<std::uint64_t>();
    report.losses.untraced_gap_ns = l.value("untraced_gap_ns", std::uint64_t{0});
    if (l.contains("programs")) {
        for (const auto& p : l.at("programs")) {
            report.losses.programs.push_back({p.at("name").get<std::string>(), p.at("run_cnt").get<std::uint64_t>(),
                                              p.at("run_time_ns").get<std::uint64_t>(),
                                              p.at("recursion_misses").get<std::uint64_t>()});
        }
    }
    return report;
}

namespace {

// Sized to fit: kernel symbol names reach KSYM_NAME_LEN (512) bytes, so a
// fixed buffer would silently cut rows short.
std::string line(const char* fmt, auto... args) {
    const int n = std::snprintf(nullptr, 0, fmt, args...);
    if (n <= 0) return {};
    std::string out(static_cast<std::size_t>(n), '\0');
    std::snprintf(out.data(), out.size() + 1, fmt, args...);
    return out;
}

unsigned long long ull(std::uint64_t v) { return static_cast<unsigned long long>(v); }

// Saturating: a corrupt record with bytes_req > bytes_alloc must not wrap.
std::uint64_t slack(std::uint64_t allocated, std::uint64_t requested) {
    return allocated > requested ? allocated - requested : 0;
}

// One "by caller" section: rows with a non-zero key, largest first.
void section(std::string& out, const char* title, const char* header, const std::vector<SiteRow>& sites,
             std::size_t top, const std::function<std::uint64_t(const SiteStats&)>& key,
             const std::function<std::string(const SiteRow&)>& format) {
    std::vector<const SiteRow*> rows;
    for (const SiteRow& row : sites)
        if (key(row.stats) > 0) rows.push_back(&row);
    std::stable_sort(rows.begin(), rows.end(),
                     [&](const SiteRow* a, const SiteRow* b) { return key(a->stats) > key(b->stats); });
    out += "\n";
    out += title;
    out += "\n";
    if (rows.empty()) {
        out += "  (none)\n";
        return;
    }
    out += header;
    out += "\n";
    const std::size_t n = top == 0 ? rows.size() : std::min(top, rows.size());
    for (std::size_t i = 0; i < n; ++i) out += format(*rows[i]);
    if (n < rows.size()) out += line("  ... %zu more\n", rows.size() - n);
}

}  // namespace

std::string report_to_text(const Report& report, std::size_t top) {
    const Totals& t = report.totals;
    const Losses& l = report.losses;
    std::string out;
    out += "kleak report\n";
    out += line("total allocations:      %llu\n", ull(t.allocs));
    out += line("total frees:            %llu (+%llu unmatched)\n", ull(t.frees), ull(t.unmatched_frees));
    out += line("total bytes allocated:  %llu [with slack] (%llu requested, %llu slack)\n", ull(t.bytes_alloc),
                ull(t.bytes_req), ull(slack(t.bytes_alloc, t.bytes_req)));
    out += line("total bytes freed:      %llu\n", ull(t.bytes_freed));
    out += line("outstanding:            %llu allocations, %llu bytes\n", ull(t.outstanding), ull(t.outstanding_bytes));
    if (t.replaced > 0) out += line("replaced (missed free): %llu\n", ull(t.replaced));
    if (t.reordered_frees > 0)
        out += line("reordered frees:        %llu (freed before their pointer was allocated again elsewhere)\n",
                    ull(t.reordered_frees));

    // Per family, when any but slab was traced: what each allocator holds.
    bool other_families = false;
    for (const SiteRow& r : report.sites) other_families |= r.stats.family != Family::slab;
    if (other_families) {
        out += line("\nby allocator family:\n%8s %12s %12s %12s %14s\n", "family", "allocs", "frees",
                    "outstanding", "bytes");
        for (const Family f : kFamilies) {
            std::uint64_t allocs = 0, frees = 0, outstanding = 0, bytes = 0;
            for (const SiteRow& r : report.sites) {
                if (r.stats.family != f) continue;
                allocs += r.stats.allocs;
                frees += r.stats.frees;
                outstanding += r.stats.outstanding;
                bytes += r.stats.outstanding_bytes;
            }
            out += line("%8s %12llu %12llu %12llu %14llu\n", std::string(family_name(f)).c_str(), ull(allocs),
                        ull(frees), ull(outstanding), ull(bytes));
        }
    }
    // Non-slab sites are marked with their family: "[page] anon_pipe_write+0x1b0".
    std::vector<SiteRow> sites = report.sites;
    for (SiteRow& r : sites)
        if (r.stats.family != Family::slab) r.site = "[" + std::string(family_name(r.stats.family)) + "] " + r.site;
    section(
        out, "allocations by caller:", "     count  caller", sites, top, [](const SiteStats& s) { return s.allocs; },
        [](const SiteRow& r) { return line("%10llu  %s\n", ull(r.stats.allocs), r.site.c_str()); });
    section(
        out, "frees by caller:", "     count  unmatched  caller", sites, top,
        [](const SiteStats& s) { return s.free_calls + s.unmatched_frees; },
        [](const SiteRow& r) {
            return line("%10llu  %9llu  %s\n", ull(r.stats.free_calls + r.stats.unmatched_frees),
                        ull(r.stats.unmatched_frees), r.site.c_str());
        });
    section(
        out, "allocated bytes by caller [with slack]:", "     bytes   requested       slack  caller", sites, top,
        [](const SiteStats& s) { return s.bytes_alloc; },
        [](const SiteRow& r) {
            return line("%10llu  %10llu  %10llu  %s\n", ull(r.stats.bytes_alloc), ull(r.stats.bytes_req),
                        ull(slack(r.stats.bytes_alloc, r.stats.bytes_req)), r.site.c_str());
        });
    section(
        out, "freed bytes by caller (credited to the allocating caller):", "     bytes  caller", sites, top,
        [](const SiteStats& s) { return s.bytes_freed; },
        [](const SiteRow& r) { return line("%10llu  %s\n", ull(r.stats.bytes_freed), r.site.c_str()); });
    section(
        out, "unfreed allocations by caller:", "     count       bytes    replaced  caller", sites, top,
        [](const SiteStats& s) { return s.outstanding > 0 ? s.outstanding_bytes + 1 : 0; },
        [](const SiteRow& r) {
            // `replaced` > 0 means frees of this site's memory went unseen
            // (an untraced free path or a lost record), so part of its
            // outstanding count may not be a leak.
            return line("%10llu  %10llu  %10llu  %s\n", ull(r.stats.outstanding), ull(r.stats.outstanding_bytes),
                        ull(r.stats.replaced), r.site.c_str());
        });
    section(
        out, "unmatched frees by caller (pointer never seen allocated):", "     count  caller", sites, top,
        [](const SiteStats& s) { return s.unmatched_frees; },
        [](const SiteRow& r) { return line("%10llu  %s\n", ull(r.stats.unmatched_frees), r.site.c_str()); });

    out += "\nlosses: ring drops";
    if (other_families && l.dropped_per_family.size() >= kFamilyCount) {
        for (const Family f : kFamilies)
            out += line(" %s=%llu", std::string(family_name(f)).c_str(),
                        ull(l.dropped_per_family[static_cast<std::size_t>(f)]));
        out += ";";
    }
    for (std::size_t cpu = 0; cpu < l.dropped_per_cpu.size(); ++cpu)
        out += line(" cpu%zu=%llu", cpu, ull(l.dropped_per_cpu[cpu]));
    out +=
        line(" (total %llu); late records %llu; undecodable %llu", ull(l.dropped()), ull(l.late), ull(l.undecodable));
    // Programs are known only live; a replayed recording does not say.
    if (!l.programs.empty()) out += line("; recursion misses %llu", ull(l.recursion_misses()));
    if (l.untraced_gap_ns > 0)
        out += line("; not traced for %.3f s across a restart", static_cast<double>(l.untraced_gap_ns) / 1e9);
    out += "\n";
    if (l.dropped() > 0) {
        out += line(
            "WARNING: %llu records were lost because a ring buffer overflowed; totals undercount and "
            "unmatched frees/replaced may be inflated.\n",
            ull(l.dropped()));
        if (l.suggested_buffer_size > 0)
            out += line("         a buffer of --buffer-size %s per CPU would have held the burst (now %s).\n",
                        format_size(l.suggested_buffer_size).c_str(), format_size(l.buffer_size).c_str());
    }
    if (l.recursion_misses() > 0) {
        out += line(
            "WARNING: the kernel skipped %llu program runs that nested on their CPU (an allocation in an IRQ "
            "that interrupted the program): those events are lost.\n",
            ull(l.recursion_misses()));
    }
    // kleakd's own cost, when the kernel counts it (sysctl kernel.bpf_stats_enabled=1).
    bool costed = false;
    for (const ProgramCost& p : l.programs) {
        if (p.run_cnt == 0) continue;
        if (!costed) out += "BPF cost per event:";
        costed = true;
        out += line(" %s %.0f ns (%llu runs);", p.name.c_str(),
                    static_cast<double>(p.run_time_ns) / static_cast<double>(p.run_cnt), ull(p.run_cnt));
    }
    if (costed) out.back() = '\n';
    return out;
}

std::string top_table_text(const std::vector<SiteRow>& rows) {
    std::string out = line("%12s %14s %10s %10s  %s\n", "outstanding", "bytes", "allocs", "frees", "caller");
    if (rows.empty()) out += "  (no outstanding allocations)\n";
    for (const SiteRow& r : rows)
        out += line("%12llu %14llu %10llu %10llu  %s\n", ull(r.stats.outstanding), ull(r.stats.outstanding_bytes),
                    ull(r.stats.allocs), ull(r.stats.frees), r.site.c_str());
    return out;
}

}  // namespace kleak::core
