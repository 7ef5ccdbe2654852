// --textfile: one scrape written for node_exporter's textfile collector. The
// text goes to a hidden temporary file in the same directory (the collector
// reads only *.prom, and a rename is atomic only within one file system),
// is flushed, made world-readable and renamed over the target, so the
// collector never reads half a file.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

namespace kleak::exporter {

// nullopt, or what failed, naming the path.
std::optional<std::string> write_textfile(const std::filesystem::path& path, std::string_view text);

}  // namespace kleak::exporter
