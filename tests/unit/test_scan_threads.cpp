// ScanThreads: the daemon's runner for the `leaks --min-age` scan. Every part
// runs once, parts really run at the same time, a part's exception reaches
// the caller after the others have finished, and the width is bounded.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <stdexcept>
#include <vector>

#include "app/scan_threads.h"

namespace kleak {
namespace {

TEST(ScanThreads, RunsEveryPartOnce) {
    const ScanThreads threads(4);
    ASSERT_EQ(threads.width(), 4u);
    std::vector<std::atomic<int>> runs(4);
    threads.run(4, [&](std::size_t part) { runs[part]++; });
    for (std::size_t i = 0; i < runs.size(); ++i) EXPECT_EQ(runs[i].load(), 1) << "part " << i;
}

TEST(ScanThreads, PartsRunAtTheSameTime) {
    // Each part waits for the other: one after another, the first would wait
    // for the 5 s timeout and fail.
    const ScanThreads threads(2);
    std::promise<void> first_started, second_started;
    std::shared_future<void> first = first_started.get_future().share();
    std::shared_future<void> second = second_started.get_future().share();
    std::atomic<int> met{0};
    threads.run(2, [&](std::size_t part) {
        (part == 0 ? first_started : second_started).set_value();
        if ((part == 0 ? second : first).wait_for(std::chrono::seconds(5)) == std::future_status::ready) met++;
    });
    EXPECT_EQ(met.load(), 2);
}

TEST(ScanThreads, RethrowsAPartsExceptionAfterEveryPartFinished) {
    const ScanThreads threads(3);
    std::atomic<int> finished{0};
    EXPECT_THROW(threads.run(3,
                             [&](std::size_t part) {
                                 if (part == 1) throw std::runtime_error("part 1 failed");
                                 std::this_thread::sleep_for(std::chrono::milliseconds(20));
                                 finished++;
                             }),
                 std::runtime_error);
    EXPECT_EQ(finished.load(), 2);
}

TEST(ScanThreads, WidthIsBounded) {
    EXPECT_EQ(ScanThreads(1).width(), 1u);
    EXPECT_EQ(ScanThreads(64).width(), ScanThreads::kMaxWidth);
    const std::size_t automatic = ScanThreads().width();
    EXPECT_GE(automatic, 1u);
    EXPECT_LE(automatic, ScanThreads::kMaxWidth);
    EXPECT_LE(automatic, std::thread::hardware_concurrency());
}

}  // namespace
}  // namespace kleak
