#include "exporter/daemon_metrics.h"

#include <algorithm>
#include <utility>

namespace kleak::exporter {

namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;
using nlohmann::json;

// The daemon's reply fields, read strictly: a field the exporter relies on
// and does not find means a daemon it does not understand, which the scrape
// says (kleakd_up 0 and the message) rather than exporting zeros.
const json& field(const json& object, const char* path, const char* key) {
    if (!object.is_object() || !object.contains(key))
        throw ReplyError(std::string("kleakd's reply has no ") + path + "." + key);
    return object.at(key);
}

double number(const json& object, const char* path, const char* key) {
    const json& value = field(object, path, key);
    if (!value.is_number()) throw ReplyError(std::string("kleakd's reply: ") + path + "." + key + " is not a number");
    return value.get<double>();
}

std::string text(const json& object, const char* path, const char* key) {
    const json& value = field(object, path, key);
    if (value.is_string()) return value.get<std::string>();
    if (value.is_number()) return value.dump();
    throw ReplyError(std::string("kleakd's reply: ") + path + "." + key + " is not a string");
}

MetricFamily family(std::string name, std::string help, MetricType type) {
    return MetricFamily{std::move(name), std::move(help), type, {}};
}

ClientMetric sample(MetricType type, double value, std::vector<ClientMetric::Label> labels = {}) {
    ClientMetric m;
    m.label = std::move(labels);
    if (type == MetricType::Counter)
        m.counter.value = value;
    else
        m.gauge.value = value;
    return m;
}

MetricFamily single(std::string name, std::string help, MetricType type, double value) {
    MetricFamily f = family(std::move(name), std::move(help), type);
    f.metric.push_back(sample(type, value));
    return f;
}

MetricFamily up(double value) {
    return single("kleakd_up", "1 if kleakd answered this scrape, 0 if not (the exporter logs why)",
                  MetricType::Gauge, value);
}

// One per-site row as the exposition labels it; `family` is the allocator
// family (slab, page, percpu, vmalloc), "" in the sum of the other sites.
struct SiteRow {
    std::vector<ClientMetric::Label> labels;
    double outstanding = 0, bytes = 0, growth_per_hour = 0, growth_bytes_per_hour = 0;
};

SiteRow site_row(const json& row) {
    SiteRow r;
    r.labels = {{"site", text(row, "suspects[]", "site")},
                {"function", text(row, "suspects[]", "function")},
                {"family", row.contains("family") ? text(row, "suspects[]", "family") : "slab"},
                {"cache", row.contains("cache") ? text(row, "suspects[]", "cache") : ""},
                {"verdict", text(row, "suspects[]", "verdict")}};
    r.outstanding = number(row, "suspects[]", "outstanding");
    r.bytes = number(row, "suspects[]", "outstanding_bytes");
    r.growth_per_hour = number(row, "suspects[]", "growth_per_hour");
    r.growth_bytes_per_hour = number(row, "suspects[]", "growth_bytes_per_hour");
    return r;
}

void add_sites(std::vector<MetricFamily>& out, const json& suspects, const MetricsOptions& options) {
    const json& rows = field(suspects, "suspects", "suspects");
    if (!rows.is_array()) throw ReplyError("kleakd's reply: suspects.suspects is not an array");

    // The daemon sums the sites past `top` (= max_sites) into `rest`; rows
    // past max_sites, should a reply carry more, are added to it.
    const json& rest = field(suspects, "suspects", "rest");
    SiteRow other;
    other.labels = {{"site", "other"}, {"function", ""}, {"family", ""}, {"cache", ""}, {"verdict", ""}};
    other.outstanding = number(rest, "suspects.rest", "outstanding");
    other.bytes = number(rest, "suspects.rest", "outstanding_bytes");
    other.growth_per_hour = number(rest, "suspects.rest", "growth_per_hour");
    other.growth_bytes_per_hour = number(rest, "suspects.rest", "growth_bytes_per_hour");
    std::vector<SiteRow> shown;
    for (const json& row : rows) {
        SiteRow r = site_row(row);
        if (shown.size() < options.max_sites) {
            shown.push_back(std::move(r));
            continue;
        }
        other.outstanding += r.outstanding;
        other.bytes += r.bytes;
        other.growth_per_hour += r.growth_per_hour;
        other.growth_bytes_per_hour += r.growth_bytes_per_hour;
    }
    // `other` is always there (0 when every site is shown), so a dashboard's
    // sum over sites never loses a series when the site count crosses the cap.
    shown.push_back(std::move(other));

    MetricFamily count = family("kleakd_site_outstanding_allocations",
                                "Allocations from this call site not freed yet (site=other: the sites past "
                                "--max-sites, summed)",
                                MetricType::Gauge);
    MetricFamily bytes = family("kleakd_site_outstanding_bytes",
                                "Bytes allocated from this call site and not freed yet", MetricType::Gauge);
    MetricFamily growth = family("kleakd_site_growth_allocations_per_second",
                                 "Trend of the site's outstanding allocations over the verdict window "
                                 "(Theil-Sen slope; times 3600 for the per-hour figure kleakctl shows)",
                                 MetricType::Gauge);
    MetricFamily growth_bytes = family("kleakd_site_growth_bytes_per_second",
                                       "Trend of the site's outstanding bytes over the verdict window",
                                       MetricType::Gauge);
    for (const SiteRow& r : shown) {
        count.metric.push_back(sample(MetricType::Gauge, r.outstanding, r.labels));
        bytes.metric.push_back(sample(MetricType::Gauge, r.bytes, r.labels));
        growth.metric.push_back(sample(MetricType::Gauge, r.growth_per_hour / 3600.0, r.labels));
        growth_bytes.metric.push_back(sample(MetricType::Gauge, r.growth_bytes_per_hour / 3600.0, r.labels));
    }
    out.push_back(std::move(count));
    out.push_back(std::move(bytes));
    out.push_back(std::move(growth));
    out.push_back(std::move(growth_bytes));
}

}  // namespace

std::vector<MetricFamily> daemon_metrics(const DaemonReplies& replies, const MetricsOptions& options) {
    const json& version = replies.version;
    const json& stats = replies.stats;
    const json& suspects = replies.suspects;
    std::vector<MetricFamily> out;
    out.push_back(up(1));

    const json& kernel = field(stats, "stats", "kernel");
    MetricFamily info = family("kleakd_build_info",
                               "kleakd's version, query protocol and record ABI, and the kernel it traces; always 1",
                               MetricType::Gauge);
    info.metric.push_back(sample(MetricType::Gauge, 1,
                                 {{"version", text(version, "version", "kleakd")},
                                  {"protocol", text(version, "version", "protocol")},
                                  {"abi", text(version, "version", "abi")},
                                  {"kernel", text(kernel, "stats.kernel", "release")},
                                  {"attach", text(kernel, "stats.kernel", "attach")}}));
    out.push_back(std::move(info));

    out.push_back(single("kleakd_uptime_seconds", "Time since kleakd started tracing", MetricType::Gauge,
                         number(stats, "stats", "uptime_ns") / 1e9));
    out.push_back(single("kleakd_records_total", "Ring records kleakd consumed", MetricType::Counter,
                         number(stats, "stats", "records")));

    const json& per_cpu = field(stats, "stats", "dropped_per_cpu");
    if (!per_cpu.is_array()) throw ReplyError("kleakd's reply: stats.dropped_per_cpu is not an array");
    MetricFamily dropped = family("kleakd_dropped_records_total",
                                  "Records lost because the CPU's ring was full (leaks and frees can be missed)",
                                  MetricType::Counter);
    for (std::size_t cpu = 0; cpu < per_cpu.size(); ++cpu) {
        if (!per_cpu[cpu].is_number()) throw ReplyError("kleakd's reply: stats.dropped_per_cpu[] is not a number");
        dropped.metric.push_back(
            sample(MetricType::Counter, per_cpu[cpu].get<double>(), {{"cpu", std::to_string(cpu)}}));
    }
    out.push_back(std::move(dropped));

    out.push_back(single("kleakd_late_records_total",
                         "Records that arrived behind the merge watermark (applied anyway)", MetricType::Counter,
                         number(stats, "stats", "late")));
    out.push_back(single("kleakd_undecodable_records_total", "Records too short for their kind",
                         MetricType::Counter, number(stats, "stats", "undecodable")));
    out.push_back(single("kleakd_recursion_misses_total",
                         "Tracepoint events the kernel did not run kleakd's programs for (nested), less those "
                         "recorded by the nested-free program",
                         MetricType::Counter, number(stats, "stats", "recursion_misses")));
    out.push_back(single("kleakd_suggested_buffer_size_bytes",
                         "Ring size per CPU that would have held the largest burst seen (config tracing.buffer_size)",
                         MetricType::Gauge, number(stats, "stats", "suggested_buffer_size")));
    out.push_back(single("kleakd_tracker_memory_bytes", "Memory the tracker uses for the outstanding allocations",
                         MetricType::Gauge, number(stats, "stats", "tracker_bytes")));
    out.push_back(single("kleakd_verdict_memory_bytes", "Memory of the site histories and verdicts",
                         MetricType::Gauge, number(field(stats, "stats", "verdicts"), "stats.verdicts", "memory_bytes")));
    out.push_back(single("kleakd_printk_lines_total", "Kernel log lines kleakd captured", MetricType::Counter,
                         number(field(stats, "stats", "printk"), "stats.printk", "last_seq")));

    const json& totals = field(stats, "stats", "totals");
    out.push_back(single("kleakd_outstanding_allocations", "Allocations traced and not freed yet",
                         MetricType::Gauge, number(totals, "stats.totals", "outstanding")));
    out.push_back(single("kleakd_outstanding_bytes", "Bytes allocated and not freed yet", MetricType::Gauge,
                         number(totals, "stats.totals", "outstanding_bytes")));
    out.push_back(single("kleakd_allocations_total", "Allocations traced", MetricType::Counter,
                         number(totals, "stats.totals", "allocs")));
    out.push_back(single("kleakd_frees_total", "Frees of traced allocations", MetricType::Counter,
                         number(totals, "stats.totals", "frees")));
    out.push_back(single("kleakd_allocated_bytes_total", "Bytes allocated (as the allocator sized them)",
                         MetricType::Counter, number(totals, "stats.totals", "bytes_alloc")));
    out.push_back(single("kleakd_freed_bytes_total", "Bytes freed", MetricType::Counter,
                         number(totals, "stats.totals", "bytes_freed")));
    out.push_back(single("kleakd_unmatched_frees_total",
                         "Frees of pointers kleakd never saw allocated (made before tracing, or lost)",
                         MetricType::Counter, number(totals, "stats.totals", "unmatched_frees")));
    out.push_back(single("kleakd_replaced_allocations_total",
                         "Outstanding allocations whose pointer was allocated again without a free seen (a missed "
                         "free)",
                         MetricType::Counter, number(totals, "stats.totals", "replaced")));

    out.push_back(single("kleakd_sites", "Call sites with something outstanding", MetricType::Gauge,
                         number(suspects, "suspects", "sites")));
    out.push_back(single("kleakd_growing_sites", "Call sites judged growing at the last verdict sample",
                         MetricType::Gauge, number(suspects, "suspects", "growing")));
    out.push_back(single("kleakd_verdict_samples_total", "Verdict samples taken since kleakd started",
                         MetricType::Counter, number(suspects, "suspects", "samples")));
    add_sites(out, suspects, options);
    return out;
}

std::vector<MetricFamily> daemon_down_metrics() {
    std::vector<MetricFamily> out;
    out.push_back(up(0));
    return out;
}

std::vector<MetricFamily> exporter_metrics(const std::string& exporter_version, double scrape_seconds) {
    std::vector<MetricFamily> out;
    MetricFamily info = family("kleakd_exporter_build_info", "kleakd-exporter's version; always 1", MetricType::Gauge);
    info.metric.push_back(sample(MetricType::Gauge, 1, {{"version", exporter_version}}));
    out.push_back(std::move(info));
    out.push_back(single("kleakd_exporter_scrape_duration_seconds",
                         "Time this scrape took to query kleakd over its socket (0 when it could not connect)",
                         MetricType::Gauge, scrape_seconds));
    return out;
}

}  // namespace kleak::exporter
