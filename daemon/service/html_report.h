// The self-contained HTML leak report: the page template (report/report.html)
// with d3 and the page data (core/report_page.h) inlined, so the file opens
// anywhere, offline, and fetches nothing. The template draws; this only
// fills it in, escaping what it inlines.
//
// The template and Debian's d3 (libjs-d3) are compiled into the binary
// (cmake/EmbedAsset.cmake): the page's code and the data's shape change
// together, so they ship in one file and cannot be mismatched, and kleakctl
// writes a report from the build tree or an installed package alike.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace kleak::service {

// JSON for the inside of a <script type="application/json"> element: '<',
// '>' and '&' written as \u003c, \u003e, \u0026 (they occur only inside JSON
// strings, where the escapes mean the same), so no data can close the
// element ("</script>") or open a comment ("<!--"). Invalid UTF-8 from the
// kernel's names becomes U+FFFD.
std::string json_for_script_element(const nlohmann::json& data);

// JavaScript for the inside of a <script> element: every "</script" (any
// case) becomes "<\/script", which means the same inside a JS string or
// regular expression, the only places it can occur.
std::string js_for_script_element(std::string_view js);

// The page: `page_template` with its one "/*KLEAK_D3*/" replaced by `d3_js`
// and its one "KLEAK_PAGE_DATA" by the data. Throws std::invalid_argument
// when a marker is missing.
std::string render_report_html(const nlohmann::json& page_data, std::string_view page_template,
                               std::string_view d3_js);

// The same with the template and d3 built into this binary.
std::string render_report_html(const nlohmann::json& page_data);

// The embedded assets (generated at build time).
std::string_view report_template();
std::string_view report_d3_js();

}  // namespace kleak::service
