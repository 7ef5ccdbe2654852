// Start-up: the site histories the newest snapshot carries (its "history"
// section, core/history_section.h) go back into the verdicts when they were
// written in this boot, under this kernel, at this sampling interval. One log
// line says what was restored, or why the histories start afresh.
#pragma once

#include <filesystem>

#include "core/site_verdicts.h"

namespace kleak {

// Reads <snapshot_directory>/latest.json; never throws: whatever is wrong
// with the file, the daemon starts with fresh histories.
void restore_site_histories(core::SiteVerdicts& verdicts, const std::filesystem::path& snapshot_directory);

}  // namespace kleak
