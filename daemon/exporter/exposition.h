// The two exposition formats a scrape can ask for: the Prometheus text format
// 0.0.4 (prometheus-cpp's TextSerializer writes it) and OpenMetrics 1.0.0,
// which prometheus-cpp 1.0 does not write, so OpenMetricsSerializer below
// does, over the same MetricFamily model: counter families are named
// without `_total` (their samples keep it) and the text ends with `# EOF`.
#pragma once

#include <prometheus/metric_family.h>
#include <prometheus/serializer.h>

#include <iosfwd>
#include <string>
#include <string_view>
#include <vector>

namespace kleak::exporter {

enum class Format { prometheus_text, openmetrics };

// From the scraper's Accept header: OpenMetrics when it names
// application/openmetrics-text (Prometheus does, first), else the text format.
Format negotiate_format(std::string_view accept);
std::string_view content_type(Format format);

class OpenMetricsSerializer : public prometheus::Serializer {
public:
    using Serializer::Serialize;
    void Serialize(std::ostream& out, const std::vector<prometheus::MetricFamily>& families) const override;
};

std::string serialize(const std::vector<prometheus::MetricFamily>& families, Format format);

}  // namespace kleak::exporter
