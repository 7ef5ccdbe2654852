#include "kleakctl/format.h"

#include <fmt/format.h>

#include <algorithm>

#include "core/report.h"
#include "core/stacks_query.h"
#include "proto/protocol.h"

namespace kleak::ctl {

namespace {

std::uint64_t u64(const nlohmann::json& j, const char* key) { return j.at(key).get<std::uint64_t>(); }

// "1.5s", "3m20s"-ish: enough for an age column.
std::string human_age(std::uint64_t ns) {
    const double s = static_cast<double>(ns) / 1e9;
    if (s < 60) return fmt::format("{:.1f}s", s);
    if (s < 3600) return fmt::format("{:.1f}m", s / 60);
    if (s < 86400) return fmt::format("{:.1f}h", s / 3600);
    return fmt::format("{:.1f}d", s / 86400);
}

// "alloc_pipe_info+0xd7 [kmalloc-cg-192]" when the row names its cache.
std::string site_with_cache(const nlohmann::json& row) {
    const std::string cache = row.value("cache", "");
    return row.at("site").get<std::string>() + (cache.empty() ? "" : " [" + cache + "]");
}

}  // namespace

namespace {
// "[page] anon_pipe_write+0x1b0": rows of a family other than slab say so.
std::string with_family(const nlohmann::json& row, std::string site) {
    const std::string family = row.value("family", "slab");
    return family == "slab" ? site : "[" + family + "] " + site;
}

// "  (by sshd in /system.slice/ssh.service)": the row's top comm and cgroup,
// when its site has live allocations that carry a process; "" otherwise.
std::string top_process(const nlohmann::json& row) {
    if (!row.contains("comms") || row.at("comms").empty()) return "";
    const auto key = [](const nlohmann::json& rows) {
        const std::string k = rows.empty() ? std::string() : rows.front().at("key").get<std::string>();
        return k.empty() ? std::string("(exited)") : k;
    };
    return "  (by " + key(row.at("comms")) + " in " + key(row.value("cgroups", nlohmann::json::array())) + ")";
}
}  // namespace

std::string format_leaks(const nlohmann::json& result) {
    const auto& sites = result.at("sites");
    const std::uint64_t min_age = u64(result, "min_age_ns");
    std::string out = fmt::format("{} outstanding allocations, {} bytes{}; top {} call sites by {}:\n",
                                  u64(result, "outstanding"), u64(result, "outstanding_bytes"),
                                  min_age ? " older than " + proto::format_duration(min_age) : std::string(),
                                  sites.size(), result.at("sort").get<std::string>());
    const bool ages = min_age > 0;
    const bool verdicts = !sites.empty() && sites.front().contains("verdict");
    out += fmt::format("{:>12} {:>14} {:>10} {:>10} {:>9}{}{}  {}\n", "outstanding", "bytes", "allocs", "frees",
                       "replaced", ages ? fmt::format(" {:>8}", "oldest") : "",
                       verdicts ? fmt::format(" {:<15}", "verdict") : "", "caller");
    for (const auto& s : sites) {
        out += fmt::format(
            "{:>12} {:>14} {:>10} {:>10} {:>9}{}{}  {}\n", u64(s, "outstanding"), u64(s, "outstanding_bytes"),
            u64(s, "allocs"), u64(s, "frees"), u64(s, "replaced"),
            ages && s.contains("oldest_age_ns") ? fmt::format(" {:>8}", human_age(u64(s, "oldest_age_ns"))) : "",
            verdicts ? fmt::format(" {:<15}", s.value("verdict", "")) : "",
            with_family(s, site_with_cache(s)) + top_process(s));
    }
    if (sites.empty()) out += "  (none)\n";
    return out;
}

std::string format_stats(const nlohmann::json& r) {
    std::string drops;
    for (const auto& d : r.at("dropped_per_cpu"))
        drops += (drops.empty() ? "" : " ") + std::to_string(d.get<std::uint64_t>());
    std::string attached;
    for (const auto& a : r.at("attached")) attached += (attached.empty() ? "" : ", ") + a.get<std::string>();
    const auto& t = r.at("totals");
    std::string out;
    out += fmt::format("uptime:            {}\n", human_age(u64(r, "uptime_ns")));
    out +=
        fmt::format("records:           {} ({:.0f}/s)\n", u64(r, "records"), r.at("records_per_second").get<double>());
    out += fmt::format("allocations:       {} ({} bytes)\n", u64(t, "allocs"), u64(t, "bytes_alloc"));
    out += fmt::format("frees:             {} matched, {} unmatched, {} replaced\n", u64(t, "frees"),
                       u64(t, "unmatched_frees"), u64(t, "replaced"));
    out += fmt::format("outstanding:       {} allocations, {} bytes\n", u64(r, "outstanding"),
                       u64(r, "outstanding_bytes"));
    out += fmt::format("tracker memory:    {} bytes\n", u64(r, "tracker_bytes"));
    if (r.contains("reordered_frees"))
        out += fmt::format("reordered frees:   {} (matched across a reallocation; {} waiting now)\n",
                           u64(r, "reordered_frees"), u64(r, "displaced_allocations"));
    if (r.contains("tracker_class_overflows") && u64(r, "tracker_class_overflows") > 0)
        out += fmt::format("                   {} allocations past the class table (tracked, at more bytes each)\n",
                           u64(r, "tracker_class_overflows"));
    out += fmt::format("dropped:           {} (per CPU: {})\n", u64(r, "dropped"), drops);
    if (u64(r, "suggested_buffer_size") > 0)
        out += fmt::format("                   rings overflowed: set tracing.buffer_size to {} or more\n",
                           u64(r, "suggested_buffer_size"));
    out += fmt::format("late records:      {}\n", u64(r, "late"));
    if (r.contains("recursion_misses")) out += fmt::format("recursion misses:  {}\n", u64(r, "recursion_misses"));
    if (r.contains("programs")) {
        for (const auto& p : r.at("programs")) {
            if (!p.contains("ns_per_run")) continue;
            out += fmt::format("bpf cost:          {} {:.0f} ns/event over {} runs\n", p.at("name").get<std::string>(),
                               p.at("ns_per_run").get<double>(), u64(p, "run_cnt"));
        }
    }
    out += fmt::format("undecodable:       {}\n", u64(r, "undecodable"));
    out += fmt::format("tracing:           {}\n", attached);
    if (r.contains("kernel")) {
        const auto& k = r.at("kernel");
        out += fmt::format("kernel:            Linux {}, programs attached as {} ({})\n", k.value("release", "?"),
                           k.value("attach", "?"), k.value("attach_reason", ""));
    }
    out += fmt::format("clients:           {}\n", u64(r, "clients"));
    if (r.contains("batch_flushes")) {
        const auto& f = r.at("batch_flushes");
        out += fmt::format("batch flushes:     {} CPUs flushed, {} skipped (batch empty){}\n", u64(f, "cpus_flushed"),
                           u64(f, "cpus_skipped"),
                           f.value("pending_flags_mapped", true) ? "" : "; flags not mapped: every CPU is flushed");
    }
    if (r.contains("ring_readers")) {
        const auto& rr = r.at("ring_readers");
        out += fmt::format("ring readers:      {} bytes copied out while the loop was late{}\n", u64(rr, "copied_bytes"),
                           u64(rr, "unpinned") ? fmt::format("; {} not pinned to their CPU", u64(rr, "unpinned")) : "");
    }
    if (r.contains("kallsyms_reads")) out += fmt::format("kallsyms reads:    {}\n", u64(r, "kallsyms_reads"));
    if (r.contains("verdicts")) {
        const auto& v = r.at("verdicts");
        out += fmt::format("verdicts:          {} sites growing; {} samples, one every {}; {} bytes of history\n",
                           u64(v, "growing"), u64(v, "samples"), proto::format_duration(u64(v, "interval_ns")),
                           u64(v, "memory_bytes"));
    }
    if (r.contains("printk")) {
        const auto& p = r.at("printk");
        out += fmt::format("printk:            {} lines kept (last seq {}, {} evicted), {} followers\n",
                           u64(p, "lines"), u64(p, "last_seq"), u64(p, "evicted"), u64(p, "followers"));
    }
    out += fmt::format("config:            {}\n", r.at("config").dump());
    return out;
}

std::string format_suspects(const nlohmann::json& r) {
    const auto& rows = r.at("suspects");
    std::string out = fmt::format("{} of {} call sites with outstanding allocations are growing; {} shown, most "
                                  "likely leaks first ({} samples, one every {}):\n",
                                  u64(r, "growing"), u64(r, "sites"), rows.size(), u64(r, "samples"),
                                  proto::format_duration(u64(r.at("rules"), "interval_ns")));
    out += fmt::format("{:<15} {:>11} {:>12} {:>10} {:>12} {:>7} {:>7} {:>7}  {}\n", "verdict", "outstanding", "bytes",
                       "growth/h", "bytes/h", "p50 age", "p90 age", "oldest", "caller");
    for (const auto& s : rows) {
        out += fmt::format("{:<15} {:>11} {:>12} {:>10.0f} {:>12.0f} {:>7} {:>7} {:>7}  {}\n",
                           s.at("verdict").get<std::string>(), u64(s, "outstanding"), u64(s, "outstanding_bytes"),
                           s.at("growth_per_hour").get<double>(), s.at("growth_bytes_per_hour").get<double>(),
                           human_age(u64(s, "age_p50_ns")), human_age(u64(s, "age_p90_ns")),
                           human_age(u64(s, "oldest_age_ns")), with_family(s, site_with_cache(s)) + top_process(s));
        for (const auto& reason : s.at("reasons")) out += fmt::format("{:<15} {}\n", "", reason.get<std::string>());
    }
    if (rows.empty()) out += "  (no call site has anything outstanding)\n";
    return out;
}

namespace {
std::string format_coverage(const nlohmann::json& c) {
    const auto bytes_or_dash = [](const nlohmann::json& v) {
        return v.is_null() ? std::string("-") : std::to_string(v.get<std::uint64_t>());
    };
    const auto share = [](const nlohmann::json& v) {
        return v.is_null() ? std::string("-") : fmt::format("{:.1f}%", 100 * v.get<double>());
    };
    std::string out = "\nother allocator families against the kernel's counters (since kleakd started):\n";
    out += fmt::format("{:<8} {:>8} {:>10} {:>14} {:>14} {:>8}  {}\n", "family", "traced", "live", "live bytes",
                       "kernel bytes", "share", "kernel counter");
    for (const char* name : {"percpu", "vmalloc"}) {
        if (!c.contains(name)) continue;
        const auto& f = c.at(name);
        out += fmt::format("{:<8} {:>8} {:>10} {:>14} {:>14} {:>8}  {}\n", name, f.value("traced", false) ? "yes" : "no",
                           u64(f, "live"), u64(f, "live_bytes"), bytes_or_dash(f.at("kernel_bytes")),
                           share(f.at("share")),
                           std::string(name) == "percpu" ? "/proc/meminfo Percpu: (chunks' populated pages)"
                                                         : "/proc/meminfo VmallocUsed: (pages in vmalloc areas)");
    }
    if (c.contains("page")) {
        const auto& p = c.at("page");
        out += fmt::format("{:<8} {:>8} {:>10} {:>14} {:>14} {:>8}  {}\n", "page", p.value("traced", false) ? "yes" : "no",
                           u64(p, "live"), u64(p, "live_bytes"), "-", "-", "tracked pages (no kernel total exists)");
        if (p.contains("allocated_pages")) {
            const auto& a = p.at("allocated_pages");
            out += fmt::format("  pages allocated: {} seen by kleakd of {} the kernel counted ({}): {} tracked, {} "
                               "movable, {} slab, {} vmalloc, {} percpu (counted only); freed: {} of {} ({})\n",
                               u64(a, "total"), bytes_or_dash(p.at("kernel_allocated_pages")),
                               share(p.at("allocated_share")), u64(a, "tracked"), u64(a, "movable"), u64(a, "slab"),
                               u64(a, "vmalloc"), u64(a, "percpu"), u64(p, "freed_pages"),
                               bytes_or_dash(p.at("kernel_freed_pages")), share(p.at("freed_share")));
        }
    }
    return out;
}
}  // namespace

std::string format_leaks_by(const nlohmann::json& r) {
    const std::string by = r.at("by").get<std::string>();
    std::string out = fmt::format("{} live allocations ({} bytes) carry a process (those with a kernel stack), by {}:\n",
                                  u64(r, "outstanding"), u64(r, "outstanding_bytes"), by);
    out += fmt::format("{:>12} {:>14} {:>9}  {}\n", "outstanding", "bytes", "processes", by);
    for (const auto& row : r.at("rows")) {
        const std::string key = row.at("key").get<std::string>();
        out += fmt::format("{:>12} {:>14} {:>9}  {}\n", u64(row, "outstanding"), u64(row, "outstanding_bytes"),
                           u64(row, "processes"), key.empty() ? "(exited)" : key);
    }
    return out;
}

std::string format_capture(const nlohmann::json& c) {
    std::string out = fmt::format("stacks: {}", c.at("mode").get<std::string>());
    if (c.at("mode") == "suspects") {
        out += fmt::format(" ({} call sites", u64(c, "sites"));
        if (!c.at("functions").empty()) {
            std::string names;
            for (const auto& f : c.at("functions")) names += (names.empty() ? "" : ", ") + f.get<std::string>();
            out += ", in " + names + " and the growing sites";
        }
        out += ")";
    } else if (c.at("mode") == "all" && u64(c, "sample_shift") != 0) {
        out += fmt::format(" (1 in {} pointers)", std::uint64_t{1} << u64(c, "sample_shift"));
    }
    std::uint64_t captured = 0, collided = 0, failed = 0;
    for (const auto& [family, n] : c.at("families").items()) {
        captured += u64(n, "captured");
        collided += u64(n, "collided");
        failed += u64(n, "failed");
    }
    out += fmt::format("; captured {}, lost {} (stack map full) and {} (failed)\n", captured, collided, failed);
    return out;
}

std::string format_stacks(const nlohmann::json& r) {
    std::string out = fmt::format("{} live allocations ({} bytes) carry a kernel stack\n", u64(r, "outstanding"),
                                  u64(r, "outstanding_bytes"));
    if (const std::string note = core::sampled_note(r); !note.empty()) out += "(" + note + ")\n";
    for (const auto& s : r.at("stacks")) {
        out += fmt::format("\n{} bytes in {} allocations at {} ({}):\n", u64(s, "outstanding_bytes"),
                           u64(s, "outstanding"), s.at("site").get<std::string>(), s.at("family").get<std::string>());
        for (const auto& frame : s.at("frames")) out += "    " + frame.get<std::string>() + "\n";
        std::string processes;
        for (const auto& p : s.at("processes")) {
            if (!processes.empty()) processes += ", ";
            processes += fmt::format("{}", u64(p, "tgid"));
            if (p.contains("comm")) processes += " (" + p.at("comm").get<std::string>() + ")";
            processes += fmt::format(": {}", u64(p, "outstanding"));
        }
        if (!processes.empty()) out += "  site's processes (tgid: live): " + processes + "\n";
    }
    if (r.at("stacks").empty()) out += "  (none: see the capture line below)\n";
    if (r.contains("capture")) out += "\n" + format_capture(r.at("capture"));
    return out;
}

std::string format_caches(const nlohmann::json& r) {
    const auto& rows = r.at("caches");
    std::string out = fmt::format("{} slab caches hold kleakd's live allocations; {} of them have fewer active objects "
                                  "in /proc/slabinfo than kleakd counts (frees it cannot see){}:\n",
                                  u64(r, "caches_total"), u64(r, "caches_with_excess"),
                                  r.at("slabinfo").get<bool>() ? "" : " (/proc/slabinfo unreadable: kleakd's side only)");
    out += fmt::format("{:<26} {:>10} {:>12} {:>10} {:>10} {:>8} {:>9} {:>5}\n", "cache", "live", "live bytes",
                       "kernel", "kernel all", "coverage", "excess", "sites");
    const auto number_or_dash = [](const nlohmann::json& v) {
        return v.is_null() ? std::string("-") : std::to_string(v.get<std::uint64_t>());
    };
    for (const auto& c : rows) {
        const auto& coverage = c.at("coverage");
        std::string note;
        if (u64(c, "excess") > 0) note = "  untracked frees";
        else if (c.at("reclaimable").get<bool>()) note = "  reclaimable";
        out += fmt::format("{:<26} {:>10} {:>12} {:>10} {:>10} {:>8} {:>9} {:>5}{}\n", c.at("cache").get<std::string>(),
                           u64(c, "live"), u64(c, "live_bytes"), number_or_dash(c.at("kernel_active")),
                           number_or_dash(c.at("kernel_total")),
                           coverage.is_null() ? std::string("-") : fmt::format("{:.2f}", coverage.get<double>()),
                           u64(c, "excess"), u64(c, "sites"), note);
    }
    if (rows.empty()) out += "  (no live allocations in a known cache)\n";
    const bool pooled = std::any_of(rows.begin(), rows.end(), [](const auto& c) { return c.contains("kernel_pool_active"); });
    if (pooled)
        out += "kmalloc-N rows: coverage and excess count every kmalloc cache of size N together (all types, and "
               "kmem_buckets such as msg_msg-N), as a kmalloc's size and flags do not say which one it went to\n";
    if (r.contains("coverage")) out += format_coverage(r.at("coverage"));
    return out;
}

std::string format_history(const nlohmann::json& r) {
    std::string out = fmt::format("{}: {} ({}), {} outstanding, {} bytes; one sample every {}:\n",
                                  r.at("site").get<std::string>(), r.at("verdict").get<std::string>(),
                                  r.at("reasons").at(0).get<std::string>(), u64(r, "outstanding"),
                                  u64(r, "outstanding_bytes"), proto::format_duration(u64(r, "interval_ns")));
    const auto& points = r.at("points");
    if (points.empty()) return out + "  (no samples yet)\n";
    const std::uint64_t last = u64(points.back(), "t_ns");
    // Points older than restart_ns were sampled by an earlier kleakd: shown, not judged.
    const std::uint64_t restart = r.value("restart_ns", std::uint64_t{0});
    bool marked = restart == 0;
    const std::string restart_line = fmt::format(
        "{:>10} kleakd restarted: the points above are the earlier kleakd's, "
        "not judged (it saw allocations this one cannot)\n",
        "--");
    out += fmt::format("{:>10} {:>12} {:>14}\n", "ago", "outstanding", "bytes");
    for (const auto& p : points) {
        if (!marked && u64(p, "t_ns") >= restart) {
            out += restart_line;
            marked = true;
        }
        out += fmt::format("{:>10} {:>12} {:>14}\n", human_age(last - u64(p, "t_ns")), u64(p, "outstanding"),
                           u64(p, "bytes"));
    }
    if (!marked) out += restart_line;
    return out;
}

std::string format_report(const nlohmann::json& result, std::size_t top) {
    return core::report_to_text(core::report_from_json(result), top);
}

std::string format_version(const nlohmann::json& r, const char* client_version) {
    return fmt::format("kleakctl {}\nkleakd {} (protocol {}, record ABI {})\n", client_version,
                       r.at("kleakd").get<std::string>(), r.at("protocol").get<int>(), r.at("abi").get<int>());
}

}  // namespace kleak::ctl
