// One scrape: a fresh connection to kleakd's query socket (client/client.h,
// the client kleakctl uses), `version`, `stats` and `suspects` (top
// max_sites, the rest summed by the daemon) asked in turn, and the exposition built from their replies. Scrapes run
// one at a time: concurrent scrapers wait rather than load the daemon twice.
// When the daemon cannot be reached or answers what the exporter cannot
// read, the scrape still succeeds, with kleakd_up 0, and the reason is
// logged: when it first happens or changes, then at most every 10 minutes
// while it lasts, and once more when kleakd answers again.
#pragma once

#include <chrono>
#include <filesystem>
#include <mutex>
#include <optional>
#include <string>

#include "exporter/daemon_metrics.h"
#include "exporter/exposition.h"

namespace kleak::exporter {

struct ScrapeOptions {
    std::filesystem::path socket;
    std::chrono::milliseconds timeout{10000};
    MetricsOptions metrics;
};

class Scraper {
public:
    explicit Scraper(ScrapeOptions options);

    // The exposition text in `format`. Never throws for an unreachable or
    // misbehaving daemon (that is kleakd_up 0).
    std::string scrape(Format format);

    // Why the last scrape had kleakd_up 0, if it had.
    std::optional<std::string> last_failure();

private:
    void note_failure(const std::string& why);
    void note_success();

    ScrapeOptions options_;
    std::mutex mutex_;  // one scrape at a time; guards the failure state too
    std::optional<std::string> last_failure_;
    std::chrono::steady_clock::time_point last_logged_{};
};

}  // namespace kleak::exporter
