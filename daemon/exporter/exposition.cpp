#include "exporter/exposition.h"

#include <prometheus/text_serializer.h>

#include <cmath>
#include <cstdio>
#include <ostream>
#include <sstream>

namespace kleak::exporter {

Format negotiate_format(std::string_view accept) {
    return accept.find("application/openmetrics-text") != std::string_view::npos ? Format::openmetrics
                                                                                  : Format::prometheus_text;
}

std::string_view content_type(Format format) {
    return format == Format::openmetrics ? "application/openmetrics-text; version=1.0.0; charset=utf-8"
                                         : "text/plain; version=0.0.4; charset=utf-8";
}

namespace {

// Label values: backslash, double quote and newline escaped, as in the text
// format. HELP text: backslash and newline (OpenMetrics also escapes '"').
void escaped(std::ostream& out, const std::string& value, bool quote_too) {
    for (const char c : value) {
        if (c == '\\')
            out << "\\\\";
        else if (c == '\n')
            out << "\\n";
        else if (c == '"' && quote_too)
            out << "\\\"";
        else
            out << c;
    }
}

void number(std::ostream& out, double v) {
    if (std::isnan(v)) {
        out << "NaN";
    } else if (std::isinf(v)) {
        out << (v > 0 ? "+Inf" : "-Inf");
    } else if (v == std::floor(v) && std::fabs(v) < 9007199254740992.0) {
        out << static_cast<long long>(v);
    } else {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%.17g", v);
        out << buf;
    }
}

std::string_view type_name(prometheus::MetricType type) {
    switch (type) {
        case prometheus::MetricType::Counter: return "counter";
        case prometheus::MetricType::Gauge: return "gauge";
        case prometheus::MetricType::Summary: return "summary";
        case prometheus::MetricType::Histogram: return "histogram";
        default: return "unknown";
    }
}

}  // namespace

void OpenMetricsSerializer::Serialize(std::ostream& out,
                                      const std::vector<prometheus::MetricFamily>& families) const {
    for (const prometheus::MetricFamily& f : families) {
        const bool counter = f.type == prometheus::MetricType::Counter;
        // An OpenMetrics counter family `x` has the sample `x_total`.
        std::string name = f.name;
        if (counter && name.size() > 6 && name.ends_with("_total")) name.resize(name.size() - 6);
        out << "# TYPE " << name << ' ' << type_name(f.type) << '\n';
        if (!f.help.empty()) {
            out << "# HELP " << name << ' ';
            escaped(out, f.help, true);
            out << '\n';
        }
        for (const prometheus::ClientMetric& m : f.metric) {
            out << name << (counter ? "_total" : "");
            if (!m.label.empty()) {
                out << '{';
                for (std::size_t i = 0; i < m.label.size(); ++i) {
                    if (i) out << ',';
                    out << m.label[i].name << "=\"";
                    escaped(out, m.label[i].value, true);
                    out << '"';
                }
                out << '}';
            }
            out << ' ';
            number(out, counter ? m.counter.value : f.type == prometheus::MetricType::Gauge ? m.gauge.value
                                                                                           : m.untyped.value);
            out << '\n';
        }
    }
    out << "# EOF\n";
}

std::string serialize(const std::vector<prometheus::MetricFamily>& families, Format format) {
    std::ostringstream out;
    if (format == Format::openmetrics)
        OpenMetricsSerializer().Serialize(out, families);
    else
        prometheus::TextSerializer().Serialize(out, families);
    return out.str();
}

}  // namespace kleak::exporter
