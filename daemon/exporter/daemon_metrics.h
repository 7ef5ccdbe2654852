// What kleakd-exporter exposes, built from the daemon's replies to one
// scrape's `version`, `stats` and `suspects` requests. Pure: no I/O, so tests
// feed canned replies. The families are prometheus-cpp's data model; its
// TextSerializer (and openmetrics.h) turn them into text.
//
// Names follow the Prometheus conventions: base units (bytes, seconds),
// counters end in `_total`, and per-site series are bounded: at most
// `max_sites` sites, ranked as `suspects` ranks them (growing first), and the
// rest summed into one `site="other"` series.
#pragma once

#include <prometheus/metric_family.h>

#include <cstddef>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

namespace kleak::exporter {

inline constexpr std::size_t kDefaultMaxSites = 50;
inline constexpr std::size_t kMaxMaxSites = 10000;

// One scrape's replies: the `result` objects of `version`, `stats` and
// `suspects` (asked for `max_sites` rows; its `rest` sums the others into
// `other`).
struct DaemonReplies {
    nlohmann::json version;
    nlohmann::json stats;
    nlohmann::json suspects;
};

struct MetricsOptions {
    std::size_t max_sites = kDefaultMaxSites;
};

// A reply the exporter cannot read (a field missing or mistyped): the scrape
// reports kleakd_up 0 with this message.
class ReplyError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Every kleakd_* family, kleakd_up 1 first. Throws ReplyError.
std::vector<prometheus::MetricFamily> daemon_metrics(const DaemonReplies& replies, const MetricsOptions& options);

// What a scrape shows when the daemon did not answer: kleakd_up 0, nothing
// else about it (stale values would look current).
std::vector<prometheus::MetricFamily> daemon_down_metrics();

// The exporter's own: kleakd_exporter_build_info and how long the daemon took
// to answer this scrape.
std::vector<prometheus::MetricFamily> exporter_metrics(const std::string& exporter_version, double scrape_seconds);

}  // namespace kleak::exporter
