// ScanThreads: the daemon's runner for the `leaks --min-age` scan. Every part
// runs once, parts really run at the same time, a part's exception reaches
// the caller after the others have finished, and the width is bounded.
#include <gtest/gtest.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <future>
#include <stdexcept>
#include <string>
#include <thread>
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
    for (std::size_t failing : {0, 1, 2}) {
        SCOPED_TRACE(failing);
        std::atomic<int> finished{0};
        try {
            threads.run(3, [&](std::size_t part) {
                if (part == failing) throw std::runtime_error("part " + std::to_string(part));
                std::this_thread::sleep_for(std::chrono::milliseconds(20));
                finished++;
            });
            ADD_FAILURE() << "no exception";
        } catch (const std::runtime_error& e) {
            EXPECT_EQ(std::string(e.what()), "part " + std::to_string(failing));
        }
        EXPECT_EQ(finished.load(), 2);
    }
    // Two failures: the lower part's exception, once.
    EXPECT_THROW(threads.run(3,
                             [](std::size_t part) {
                                 if (part == 1) throw std::runtime_error("part 1");
                                 if (part == 2) throw std::logic_error("part 2");
                             }),
                 std::runtime_error);
}

cpu_set_t my_cpus() {
    cpu_set_t set;
    CPU_ZERO(&set);
    EXPECT_EQ(::sched_getaffinity(0, sizeof set, &set), 0);
    return set;
}

TEST(ScanThreads, LeavesTheCallersCpusAlone) {
    // The parts' threads are moved off the caller's CPU; the caller must not
    // be (a thread that had already finished has no kernel id left, and
    // setting its CPUs would set the caller's). Parts that return at once
    // make that race likely over many runs.
    const cpu_set_t before = my_cpus();
    const ScanThreads threads(ScanThreads::kMaxWidth);
    for (int i = 0; i < 300; ++i) threads.run(threads.width(), [](std::size_t) {});
    const cpu_set_t after = my_cpus();
    EXPECT_TRUE(CPU_EQUAL(&before, &after)) << CPU_COUNT(&before) << " CPUs before, " << CPU_COUNT(&after) << " after";
}

TEST(ScanThreads, WidthIsBounded) {
    EXPECT_EQ(ScanThreads(1).width(), 1u);
    EXPECT_EQ(ScanThreads(64).width(), ScanThreads::kMaxWidth);
    const cpu_set_t cpus = my_cpus();
    const auto usable = static_cast<std::size_t>(CPU_COUNT(&cpus));
    EXPECT_EQ(ScanThreads().width(), std::min(usable, ScanThreads::kMaxWidth));
}

}  // namespace
}  // namespace kleak
