// Symbolization: /proc/kallsyms parsing, lookup, formatting, lazy caching.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "core/symbolizer.h"
#include "test_helpers.h"

namespace kleak::core {
namespace {

KallsymsTable load_fixture(const std::string& name) {
    std::ifstream in(test::fixture_path(name));
    EXPECT_TRUE(in.good()) << "cannot open " << test::fixture_path(name);
    return KallsymsTable::parse(in);
}

KallsymsTable parse_text(const std::string& text) {
    std::istringstream in(text);
    return KallsymsTable::parse(in);
}

// What a report would print for `address`.
std::string site_text(const KallsymsTable& table, std::uint64_t address) {
    return format_site(address, table.lookup(address).value_or(Symbol{}));
}

class KallsymsFixture : public ::testing::Test {
protected:
    KallsymsTable table = load_fixture("kallsyms_small.txt");
};

TEST_F(KallsymsFixture, KeepsTextSymbolsOnly) {
    // 9 core text (T/t/W) + 5 module text symbols; A, R, D, d, B, b are dropped.
    EXPECT_EQ(table.size(), 14u);
    EXPECT_FALSE(table.addresses_hidden());
}

TEST_F(KallsymsFixture, CoreSymbolWithOffset) {
    const std::optional<Symbol> symbol = table.lookup(0xffffffff81234567);
    ASSERT_TRUE(symbol.has_value());
    EXPECT_EQ(symbol->function, "__kmalloc");
    EXPECT_EQ(symbol->offset, 0x7u);
    EXPECT_EQ(symbol->module, "");
    EXPECT_EQ(format_site(0xffffffff81234567, *symbol), "__kmalloc+0x7");
}

TEST_F(KallsymsFixture, ExactSymbolAddressIsOffsetZero) {
    EXPECT_EQ(site_text(table, 0xffffffff81234560), "__kmalloc+0x0");
    EXPECT_EQ(site_text(table, 0xffffffff81000000), "_stext+0x0");
    EXPECT_EQ(site_text(table, 0xffffffffc0a01000), "foo_init+0x0 [foo]");
}

TEST_F(KallsymsFixture, OffsetIsLowercaseHex) {
    EXPECT_EQ(site_text(table, 0xffffffff81a004ab), "skb_release_data+0xab");
    EXPECT_EQ(site_text(table, 0xffffffff812345ef), "__kmalloc+0x8f");
}

TEST_F(KallsymsFixture, WeakSymbolsAreText) {
    EXPECT_EQ(site_text(table, 0xffffffff81240410), "kmem_cache_free+0x10");
}

TEST_F(KallsymsFixture, ModuleSymbolFormatting) {
    const std::optional<Symbol> symbol = table.lookup(0xffffffffc0a01010);
    ASSERT_TRUE(symbol.has_value());
    EXPECT_EQ(symbol->function, "foo_init");
    EXPECT_EQ(symbol->offset, 0x10u);
    EXPECT_EQ(symbol->module, "foo");
    EXPECT_EQ(format_site(0xffffffffc0a01010, *symbol), "foo_init+0x10 [foo]");

    // Modules listed out of address order (bar before foo) still resolve.
    EXPECT_EQ(site_text(table, 0xffffffffc0b00004), "bar_probe+0x4 [bar]");
    EXPECT_EQ(site_text(table, 0xffffffffc0a03100), "foo_work_fn+0x100 [foo]");
}

TEST_F(KallsymsFixture, DataSymbolsAreNeverNamed) {
    // Without symbol sizes the nearest text symbol below is blamed; the point
    // is that a data/bss/rodata symbol never is.
    EXPECT_EQ(site_text(table, 0xffffffff82200000), "_etext+0x400000");          // init_task (D)
    EXPECT_EQ(site_text(table, 0xffffffff82800100), "_etext+0xa00100");          // dummy_bss (b)
    EXPECT_EQ(site_text(table, 0xffffffffc0a02000), "foo_init+0x1000 [foo]");    // foo_counter (b)
    EXPECT_EQ(site_text(table, 0xffffffffc0b01000), "0xffffffffc0b01000");       // bar_table (d), past the last text
}

TEST_F(KallsymsFixture, BelowTheFirstSymbolIsUnknown) {
    EXPECT_FALSE(table.lookup(0xffffffff80ffffff).has_value());
    EXPECT_FALSE(table.lookup(0).has_value());
    EXPECT_FALSE(table.lookup(0x1000).has_value());  // an absolute (A) symbol's address
    EXPECT_EQ(site_text(table, 0xffffffff80ffffff), "0xffffffff80ffffff");
}

TEST_F(KallsymsFixture, PastTheLastSymbolIsUnknown) {
    // The last text symbol is bar_remove at ffffffffc0b00800.
    EXPECT_EQ(site_text(table, 0xffffffffc0b00800), "bar_remove+0x0 [bar]");
    EXPECT_FALSE(table.lookup(0xffffffffc0b00801).has_value());
    EXPECT_FALSE(table.lookup(0xffffffffffffffff).has_value());
    EXPECT_EQ(site_text(table, 0xffffffffc0b00801), "0xffffffffc0b00801");
}

TEST(Kallsyms, AllZeroAddressesMeanHidden) {
    // kptr_restrict: a reader without CAP_SYSLOG sees every address as 0.
    const KallsymsTable table = load_fixture("kallsyms_hidden.txt");
    EXPECT_TRUE(table.addresses_hidden());
    EXPECT_EQ(table.size(), 0u);
    EXPECT_FALSE(table.lookup(0xffffffff81234567).has_value());
}

TEST(Kallsyms, EmptyInputIsNotHidden) {
    const KallsymsTable table = parse_text("");
    EXPECT_FALSE(table.addresses_hidden());
    EXPECT_EQ(table.size(), 0u);
    EXPECT_FALSE(table.lookup(0xffffffff81000000).has_value());
}

TEST(Kallsyms, MalformedLinesAreSkipped) {
    const KallsymsTable table = parse_text(
        "\n"
        "not-hex T bogus\n"
        "ffffffff81000000 TT two_letter_type\n"
        "ffffffff81000000 T\n"
        "ffffffff81000zzz T trailing_junk_in_address\n"
        "   \t  \n"
        "ffffffff81000100 T good_symbol\n"
        "ffffffff81000200 t   spaced_symbol \t [spaced]\n");
    EXPECT_EQ(table.size(), 2u);
    EXPECT_EQ(site_text(table, 0xffffffff81000180), "good_symbol+0x80");
    EXPECT_EQ(site_text(table, 0xffffffff81000200), "spaced_symbol+0x0 [spaced]");
    EXPECT_EQ(site_text(table, 0xffffffff810000ff), "0xffffffff810000ff");
}

TEST(FormatSite, UnknownIsPlainHex) {
    EXPECT_EQ(format_site(0xffffffff81234567, Symbol{}), "0xffffffff81234567");
    EXPECT_EQ(format_site(0, Symbol{}), "0x0");
    EXPECT_EQ(format_site(0xffffffffffffffff, Symbol{}), "0xffffffffffffffff");
}

TEST(FormatSite, KnownWithAndWithoutModule) {
    EXPECT_EQ(format_site(1, Symbol{"f", 0, ""}), "f+0x0");
    EXPECT_EQ(format_site(1, Symbol{"f", 0xffffffffffffffff, "m"}), "f+0xffffffffffffffff [m]");
}

TEST(CachingSymbolizer, LoadsLazilyAndOnce) {
    int loads = 0;
    CachingSymbolizer symbolizer([&loads] {
        ++loads;
        return load_fixture("kallsyms_small.txt");
    });
    EXPECT_EQ(loads, 0);
    EXPECT_EQ(symbolizer.table(), nullptr);

    const Symbol first = symbolizer.resolve(0xffffffffc0a01010);
    EXPECT_EQ(loads, 1);
    ASSERT_NE(symbolizer.table(), nullptr);
    EXPECT_EQ(symbolizer.table()->size(), 14u);
    EXPECT_EQ(format_site(0xffffffffc0a01010, first), "foo_init+0x10 [foo]");

    for (std::uint64_t i = 0; i < 1000; ++i) symbolizer.resolve(0xffffffff81000000 + i * 0x1000);
    EXPECT_EQ(format_site(0xffffffff81234567, symbolizer.resolve(0xffffffff81234567)), "__kmalloc+0x7");
    EXPECT_EQ(format_site(0xffffffffc0a01010, symbolizer.resolve(0xffffffffc0a01010)), "foo_init+0x10 [foo]");
    EXPECT_FALSE(symbolizer.resolve(0x10).known());
    EXPECT_FALSE(symbolizer.resolve(0x10).known());  // a cached unknown stays unknown
    EXPECT_EQ(loads, 1);
}

TEST(CachingSymbolizer, AnEmptyTableIsLoadedOnlyOnce) {
    int loads = 0;
    CachingSymbolizer symbolizer([&loads] {
        ++loads;
        return load_fixture("kallsyms_hidden.txt");
    });
    EXPECT_FALSE(symbolizer.resolve(0xffffffff81234567).known());
    EXPECT_FALSE(symbolizer.resolve(0xffffffff81234568).known());
    EXPECT_EQ(loads, 1);
    EXPECT_TRUE(symbolizer.table()->addresses_hidden());
}

TEST(CachingSymbolizer, WithKnownAddressesResolvesThemAllInOnePassAndLetsTheTableGo) {
    int loads = 0;
    std::vector<std::uint64_t> known{0xffffffff81234567, 0xffffffffc0a01010, 0x10};
    CachingSymbolizer symbolizer(
        [&loads] {
            ++loads;
            return load_fixture("kallsyms_small.txt");
        },
        [&known] { return known; });
    EXPECT_EQ(format_site(0xffffffffc0a01010, symbolizer.resolve(0xffffffffc0a01010)), "foo_init+0x10 [foo]");
    EXPECT_EQ(loads, 1);
    EXPECT_EQ(symbolizer.table(), nullptr) << "the table is not kept";
    // The other known addresses were resolved in the same pass, unknowns included.
    EXPECT_EQ(format_site(0xffffffff81234567, symbolizer.resolve(0xffffffff81234567)), "__kmalloc+0x7");
    EXPECT_FALSE(symbolizer.resolve(0x10).known());
    EXPECT_EQ(loads, 1);
    // A call site seen since: one more pass.
    known.push_back(0xffffffffc0a01020);
    EXPECT_EQ(format_site(0xffffffffc0a01020, symbolizer.resolve(0xffffffffc0a01020)), "foo_init+0x20 [foo]");
    EXPECT_EQ(loads, 2);
    EXPECT_EQ(symbolizer.loads(), 2u);
    EXPECT_EQ(format_site(0xffffffff81234567, symbolizer.resolve(0xffffffff81234567)), "__kmalloc+0x7");
    EXPECT_EQ(loads, 2);
}

TEST(CachingSymbolizer, NameKnownReadsOnlyWhenAKnownAddressIsUnnamed) {
    int loads = 0;
    std::vector<std::uint64_t> known{0xffffffff81234567};
    CachingSymbolizer symbolizer(
        [&loads, &known] {
            ++loads;
            known.push_back(0xffffffffc0a01010);  // a site that appears while the file is read
            return load_fixture("kallsyms_small.txt");
        },
        [&known] { return known; });
    EXPECT_TRUE(symbolizer.name_known());
    EXPECT_EQ(loads, 1);
    EXPECT_EQ(symbolizer.table(), nullptr);
    EXPECT_FALSE(symbolizer.name_known());
    EXPECT_EQ(loads, 1) << "everything known is named, the one that appeared during the read too";
    EXPECT_EQ(format_site(0xffffffffc0a01010, symbolizer.resolve(0xffffffffc0a01010)), "foo_init+0x10 [foo]");
    EXPECT_EQ(format_site(0xffffffff81234567, symbolizer.resolve(0xffffffff81234567)), "__kmalloc+0x7");
    EXPECT_EQ(loads, 1);

    CachingSymbolizer without_known([&loads] {
        ++loads;
        return load_fixture("kallsyms_small.txt");
    });
    EXPECT_FALSE(without_known.name_known());
    EXPECT_EQ(loads, 1) << "nothing to name without a list of known addresses";
}

TEST(KallsymsTable, ParseCallsBackEveryChunkOfLines) {
    std::ostringstream text;
    const std::size_t lines = 2 * KallsymsTable::kChunkLines + 100;
    for (std::size_t i = 0; i < lines; ++i) text << std::hex << 0xffffffff81000000 + i * 0x10 << std::dec << " T f" << i << "\n";
    std::istringstream in(text.str());
    int calls = 0;
    const KallsymsTable table = KallsymsTable::parse(in, [&calls] { ++calls; });
    EXPECT_EQ(calls, 2);
    EXPECT_EQ(table.size(), lines);
    ASSERT_TRUE(table.lookup(0xffffffff81000000 + 5000 * 0x10 + 3).has_value());
    EXPECT_EQ(table.lookup(0xffffffff81000000 + 5000 * 0x10 + 3)->function, "f5000");
}

TEST(CachingSymbolizer, WithKnownAddressesAnEmptyTableIsStillReadOnlyOnce) {
    int loads = 0;
    std::vector<std::uint64_t> known{0xffffffff81234567};
    CachingSymbolizer symbolizer(
        [&loads] {
            ++loads;
            return load_fixture("kallsyms_hidden.txt");
        },
        [&known] { return known; });
    EXPECT_TRUE(symbolizer.name_known());
    known.push_back(0xffffffff81234568);
    EXPECT_FALSE(symbolizer.resolve(0xffffffff81234568).known());
    EXPECT_FALSE(symbolizer.name_known());
    EXPECT_EQ(loads, 1) << "hidden addresses: rereading would find nothing more";
    ASSERT_NE(symbolizer.table(), nullptr);
    EXPECT_TRUE(symbolizer.table()->addresses_hidden());
}

TEST(FixedSymbolizer, AnswersFromItsMapOnly) {
    FixedSymbolizer symbolizer({{0xffffffff81a00010, Symbol{"__alloc_skb", 0x10, ""}},
                                {0xffffffffc0a01020, Symbol{"foo_init", 0x20, "foo"}}});
    EXPECT_EQ(format_site(0xffffffff81a00010, symbolizer.resolve(0xffffffff81a00010)), "__alloc_skb+0x10");
    EXPECT_EQ(format_site(0xffffffffc0a01020, symbolizer.resolve(0xffffffffc0a01020)), "foo_init+0x20 [foo]");
    // Exact addresses only: no nearest-symbol search.
    EXPECT_FALSE(symbolizer.resolve(0xffffffff81a00011).known());
}

}  // namespace
}  // namespace kleak::core
