#include "core/cpu_list.h"

#include <gtest/gtest.h>

namespace kleak::core {
namespace {

using Cpus = std::vector<unsigned>;

TEST(CpuList, ReadsRangesAndSinglesAsSysfsPrintsThem) {
    EXPECT_EQ(parse_cpu_list("0-1\n"), Cpus({0, 1}));
    EXPECT_EQ(parse_cpu_list("0"), Cpus({0}));
    EXPECT_EQ(parse_cpu_list("0-3,8,10-11\n"), Cpus({0, 1, 2, 3, 8, 10, 11}));
    EXPECT_EQ(parse_cpu_list("5,1-2"), Cpus({1, 2, 5}));  // ascending whatever the order
    EXPECT_EQ(parse_cpu_list("1,1-2"), Cpus({1, 2}));     // and distinct
}

TEST(CpuList, RefusesWhatIsNoCpuList) {
    for (const char* bad : {"", "\n", "a", "1-", "-1", "3-1", "1,,2", "1,", "0-1 2", "1.5", "65536"})
        EXPECT_EQ(parse_cpu_list(bad), std::nullopt) << '"' << bad << '"';
    EXPECT_EQ(parse_cpu_list("0-63", 64)->size(), 64u);
    EXPECT_EQ(parse_cpu_list("0-64", 64), std::nullopt);
}

}  // namespace
}  // namespace kleak::core
