// The HTML report's page (service/html_report.h): the data and d3 inlined
// so that nothing in them can end their <script> element or become markup,
// the template's markers filled exactly once, and the embedded template and
// d3 present. That the page draws is tests/report's headless-browser test.
#include "service/html_report.h"

#include <gtest/gtest.h>

#include <string>

namespace {

using kleak::service::js_for_script_element;
using kleak::service::json_for_script_element;
using kleak::service::render_report_html;
using nlohmann::json;

std::size_t count(const std::string& text, const std::string& needle) {
    std::size_t n = 0;
    for (std::size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
    return n;
}

const std::string kEvil = "</script><script>alert(1)</script><!-- <img src=x onerror=alert(2)> & \u2028";

TEST(HtmlReport, DataCannotEndItsScriptElementAndParsesBackTheSame) {
    const json data = {{"site", kEvil}, {"nested", {{"k" + kEvil, json::array({kEvil, 1, 2.5, nullptr})}}}};
    const std::string text = json_for_script_element(data);
    EXPECT_EQ(text.find('<'), std::string::npos) << text;
    EXPECT_EQ(text.find('>'), std::string::npos) << text;
    EXPECT_EQ(text.find('&'), std::string::npos) << text;
    EXPECT_NE(text.find("\\u003c/script\\u003e"), std::string::npos) << text;
    EXPECT_EQ(json::parse(text), data);  // what JSON.parse in the page gets back
}

TEST(HtmlReport, InvalidUtf8FromTheKernelIsReplacedNotFatal) {
    const json data = {{"site", std::string("bad\xff\xfe name")}};
    const std::string text = json_for_script_element(data);
    EXPECT_EQ(json::parse(text).at("site"), "bad\uFFFD\uFFFD name");
}

TEST(HtmlReport, ScriptEndTagsInJavaScriptAreEscapedInAnyCase) {
    EXPECT_EQ(js_for_script_element("var a = \"</script>\", b = '</SCRIPT >', c = /<\\/sCrIpT/;"),
              "var a = \"<\\/script>\", b = '<\\/SCRIPT >', c = /<\\/sCrIpT/;");
    EXPECT_EQ(js_for_script_element("a < b && c </ d </scrip"), "a < b && c </ d </scrip");
}

TEST(HtmlReport, MarkersAreFilledOnceFromTheTemplateOnly) {
    const std::string page_template = "<script>/*KLEAK_D3*/</script><script type=\"application/json\">KLEAK_PAGE_DATA</script>";
    // Data that holds a marker's text is inlined as it is, not filled again.
    const json data = {{"site", "/*KLEAK_D3*/ KLEAK_PAGE_DATA"}};
    const std::string page = render_report_html(data, page_template, "var d3 = {}; // KLEAK_PAGE_DATA");
    EXPECT_EQ(page, "<script>var d3 = {}; // KLEAK_PAGE_DATA</script><script type=\"application/json\">"
                    "{\"site\":\"/*KLEAK_D3*/ KLEAK_PAGE_DATA\"}</script>");
    EXPECT_THROW(render_report_html(data, "<script>/*KLEAK_D3*/</script>", ""), std::invalid_argument);
    EXPECT_THROW(render_report_html(data, "KLEAK_PAGE_DATA /*KLEAK_D3*/ KLEAK_PAGE_DATA", ""), std::invalid_argument);
}

TEST(HtmlReport, TheBuiltInPageHasD3AndTheDataAndNoScriptFromTheData) {
    const std::string page_template(kleak::service::report_template());
    const std::string d3(kleak::service::report_d3_js());
    EXPECT_EQ(count(page_template, "/*KLEAK_D3*/"), 1u);
    EXPECT_EQ(count(page_template, "KLEAK_PAGE_DATA"), 1u);
    EXPECT_GT(d3.size(), 100'000u);  // Debian's d3.min.js
    EXPECT_NE(d3.find("version"), std::string::npos);

    const json data = {{"site", kEvil}};
    const std::string page = render_report_html(data);
    EXPECT_EQ(count(page, "</script>"), count(page_template, "</script>"));
    EXPECT_EQ(count(page, "<img"), count(page_template, "<img"));
    EXPECT_NE(page.find(d3.substr(0, 200)), std::string::npos);
    // Nothing to fetch: no external script, stylesheet or image.
    EXPECT_EQ(page.find("<script src"), std::string::npos);
    EXPECT_EQ(page.find("<link"), std::string::npos);
    EXPECT_EQ(page.find("http://"), page.find("http://www.w3.org"));  // SVG's namespace only, if at all
}

}  // namespace
