#include "kleakctl/html_command.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>

#include "core/history_section.h"
#include "core/report_page.h"
#include "service/html_report.h"

namespace kleak::ctl {

namespace {

using nlohmann::json;

// Into a temporary name beside it, then renamed: a reader never sees half a
// page, and a failed write leaves an older report whole.
void write_output(const std::string& output, const std::string& page) {
    if (output == "-") {
        std::cout << page;
        std::cout.flush();
        if (!std::cout) throw std::runtime_error("cannot write the report to standard output");
        return;
    }
    const std::string temp = output + ".tmp-" + std::to_string(::getpid());
    {
        std::ofstream out(temp, std::ios::binary | std::ios::trunc);
        if (!out) throw std::runtime_error("cannot write " + output + ": " + std::strerror(errno));
        out << page;
        out.flush();
        if (!out) {
            const int err = errno;
            std::remove(temp.c_str());
            throw std::runtime_error("cannot write " + output + ": " + std::strerror(err));
        }
    }
    if (std::rename(temp.c_str(), output.c_str()) != 0) {
        const int err = errno;
        std::remove(temp.c_str());
        throw std::runtime_error("cannot rename " + temp + " to " + output + ": " + std::strerror(err));
    }
}

int render_and_write(const json& snapshot, const core::SavedSites& histories, const HtmlOptions& options,
                     std::string source) {
    core::ReportPageOptions page_options;
    page_options.curves = options.curves;
    page_options.source = std::move(source);
    const json data = core::report_page_data(snapshot, histories, page_options);
    const std::string page = service::render_report_html(data);
    try {
        write_output(options.output, page);
    } catch (const std::runtime_error& e) {
        std::cerr << "kleakctl: " << e.what() << '\n';
        return 1;
    }
    if (options.output != "-")
        std::cerr << "kleakctl: wrote " << options.output << " (" << (page.size() + 1023) / 1024 << " KiB: "
                  << data.at("table_total").get<std::size_t>() << " call sites with outstanding memory, "
                  << data.at("curves").size() << " growth curves)\n";
    return 0;
}

}  // namespace

std::string default_html_output(const std::filesystem::path& snapshot) {
    std::filesystem::path name = snapshot.filename();
    name.replace_extension(".html");
    return name.string();
}

int html_from_daemon(Client& client, const std::filesystem::path& socket, const HtmlOptions& options) {
    proto::Request request;
    request.id = 1;
    request.op = proto::Op::snapshot;
    const proto::Response snapshot = client.call(request);
    if (!snapshot.ok) {
        std::cerr << "kleakctl: kleakd refused: " << proto::error_code_name(snapshot.error->code) << ": "
                  << snapshot.error->message << '\n';
        return 1;
    }
    // Each plotted site's history at every resolution: the page joins them
    // into one series (every sample lately, coarser further back).
    core::SavedSites histories;
    for (const std::string& address : core::sites_to_plot(snapshot.result, options.curves)) {
        core::HistoryTiers tiers;
        for (std::uint32_t tier = 0; tier < tiers.size(); ++tier) {
            proto::Request history;
            history.id = ++request.id;
            history.op = proto::Op::history;
            history.history.site = address;
            history.history.resolution = tier;
            const proto::Response reply = client.call(history);
            if (!reply.ok) break;  // not_found: a site that has not allocated since a reset; no curve
            tiers[tier] = core::history_points_from_json(reply.result);
        }
        histories.emplace(std::strtoull(address.c_str(), nullptr, 16), std::move(tiers));
    }
    return render_and_write(snapshot.result, histories, options, "kleakd on " + socket.string());
}

int html_from_snapshot(const std::filesystem::path& path, const HtmlOptions& options) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot read " + path.string() + ": " + std::strerror(errno));
    // The document without its history section (which can run to tens of
    // MiB as a JSON tree); the section is read on its own, compactly.
    json snapshot;
    try {
        snapshot = json::parse(in, [](int depth, json::parse_event_t event, json& parsed) {
            return !(depth == 1 && event == json::parse_event_t::key && parsed == "history");
        });
    } catch (const json::parse_error& e) {
        throw std::runtime_error(path.string() + " is not JSON (the parser stopped at byte " +
                                 std::to_string(e.byte) + ")");
    }
    if (!snapshot.is_object() || !snapshot.contains("sites") || !snapshot.contains("monotonic_ns"))
        throw std::runtime_error(path.string() + " is not a kleakd snapshot (no \"sites\" or \"monotonic_ns\")");
    in.clear();
    in.seekg(0);
    core::ParsedHistorySection section = core::read_history_section(in);
    core::SavedSites histories;
    if (section.histories) {
        histories = std::move(section.histories->sites);
    } else if (!section.missing) {
        std::cerr << "kleakctl: " << path.string() << ": its history section is unusable (" << section.error
                  << "); the report has no growth curves\n";
    }
    return render_and_write(snapshot, histories, options, path.string());
}

}  // namespace kleak::ctl
