// kleakctl report --html FILE and kleakctl html SNAPSHOT.json: fetch the
// data (from the daemon, or a snapshot file), have the core shape it
// (core/report_page.h) and the template draw it (service/html_report.h),
// write the file.
#pragma once

#include <filesystem>
#include <string>

#include "client/client.h"

namespace kleak::ctl {

struct HtmlOptions {
    std::string output;       // "-": standard output
    std::size_t curves = 8;   // growth curves drawn
};

// The snapshot query, and the plotted sites' histories at every resolution.
// Returns the exit status (1: the daemon refused, or the file could not be
// written; messages go to stderr); throws ClientError when the daemon
// cannot be reached, nlohmann::json::exception on a reply of another shape.
int html_from_daemon(Client& client, const std::filesystem::path& socket, const HtmlOptions& options);

// A snapshot file as kleakd writes it (its history section, when present,
// gives the curves), or as `kleakctl snapshot` prints it (no curves).
// Throws std::runtime_error when the file cannot be read or is no snapshot.
int html_from_snapshot(const std::filesystem::path& snapshot, const HtmlOptions& options);

// `kleakctl html DIR/latest.json` writes ./latest.html.
std::string default_html_output(const std::filesystem::path& snapshot);

}  // namespace kleak::ctl
