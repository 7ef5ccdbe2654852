#include "html_report.h"

#include <cctype>
#include <stdexcept>
#include <utility>

namespace kleak::service {

namespace {

constexpr std::string_view kD3Marker = "/*KLEAK_D3*/";
constexpr std::string_view kDataMarker = "KLEAK_PAGE_DATA";

bool iequals_at(std::string_view text, std::size_t at, std::string_view lower) {
    if (text.size() - at < lower.size()) return false;
    for (std::size_t i = 0; i < lower.size(); ++i)
        if (std::tolower(static_cast<unsigned char>(text[at + i])) != lower[i]) return false;
    return true;
}

// Where the template holds `marker`, which it must hold exactly once.
std::size_t only(std::string_view page_template, std::string_view marker) {
    const std::size_t at = page_template.find(marker);
    if (at == std::string::npos || page_template.find(marker, at + marker.size()) != std::string::npos)
        throw std::invalid_argument("the report template must hold " + std::string(marker) + " exactly once");
    return at;
}

}  // namespace

std::string json_for_script_element(const nlohmann::json& data) {
    const std::string text = data.dump(-1, ' ', /*ensure_ascii=*/false, nlohmann::json::error_handler_t::replace);
    std::string out;
    out.reserve(text.size() + text.size() / 16);
    for (const char c : text) {
        switch (c) {
            case '<': out += "\\u003c"; break;
            case '>': out += "\\u003e"; break;
            case '&': out += "\\u0026"; break;
            default: out += c;
        }
    }
    return out;
}

std::string js_for_script_element(std::string_view js) {
    std::string out;
    out.reserve(js.size());
    for (std::size_t i = 0; i < js.size(); ++i) {
        if (js[i] == '<' && iequals_at(js, i, "</script")) {
            out += "<\\/";
            i += 1;  // the '/', replaced above
            continue;
        }
        out += js[i];
    }
    return out;
}

std::string render_report_html(const nlohmann::json& page_data, std::string_view page_template,
                               std::string_view d3_js) {
    // Markers are looked for in the template only, never in what is inlined.
    struct Fill {
        std::size_t at;
        std::string_view marker;
        std::string text;
    };
    Fill fills[2] = {{only(page_template, kD3Marker), kD3Marker, js_for_script_element(d3_js)},
                     {only(page_template, kDataMarker), kDataMarker, json_for_script_element(page_data)}};
    if (fills[1].at < fills[0].at) std::swap(fills[0], fills[1]);
    std::string page;
    page.reserve(page_template.size() + fills[0].text.size() + fills[1].text.size());
    std::size_t from = 0;
    for (const Fill& f : fills) {
        page.append(page_template.substr(from, f.at - from));
        page += f.text;
        from = f.at + f.marker.size();
    }
    page.append(page_template.substr(from));
    return page;
}

std::string render_report_html(const nlohmann::json& page_data) {
    return render_report_html(page_data, report_template(), report_d3_js());
}

}  // namespace kleak::service
