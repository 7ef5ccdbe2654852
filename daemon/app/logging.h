// spdlog set-up: plain "kleakd: level: message" on a terminal (the
// program's name first: kleakd, kleakd-exporter); under systemd
// (stderr connected to the journal) each line starts with its syslog
// priority "<N>", which journald turns into the entry's priority.
#pragma once

#include <string>

namespace kleak {

void setup_logging(const char* program = "kleakd");
// True if stderr is the journal stream systemd set up for this service.
bool stderr_is_journal();

}  // namespace kleak
