#include "core/quant/methods/billm/billm.h"

#include "core/error.h"
#include "core/quant/common/error_measures.h"
#include "core/quant/methods/arb/arb.h"
#include "core/quant/registry.h"
#include "core/saliency.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <memory>
#include <numeric>

namespace pbllm {

double quantile_of_sorted(const std::vector<float>& sorted, double q)
{
    if (sorted.empty())
        return 0.0;
    const double pos = q * static_cast<double>(sorted.size() - 1);
    const std::size_t lo = static_cast<std::size_t>(std::floor(pos));
    const std::size_t hi = std::min(lo + 1, sorted.size() - 1);
    return sorted[lo] + (static_cast<double>(sorted[hi]) - sorted[lo]) * (pos - static_cast<double>(lo));
}

namespace {

constexpr int kBreakCandidates = 81; // the 0.10, 0.11, ..., 0.90 quantiles

// ---- the definition: binarize a set of values and measure the squared error -------------------

/// One order of binarization of `xs` in place: xs becomes the residual x - (alpha sign(x - mu) + mu),
/// mu the mean and alpha the mean absolute deviation from it (sign(0) = +1).
void binarize_in_place(std::vector<double>& xs)
{
    if (xs.empty())
        return;
    const double n = static_cast<double>(xs.size());
    double mu = 0.0, alpha = 0.0;
    for (double x : xs) mu += x;
    mu /= n;
    for (double x : xs) alpha += std::fabs(x - mu);
    alpha /= n;
    for (double& x : xs) x -= x - mu >= 0.0 ? mu + alpha : mu - alpha;
}

double residual_error(std::vector<double> xs, int order)
{
    for (int o = 0; o < order; ++o)
        binarize_in_place(xs);
    double e = 0.0;
    for (double x : xs) e += x * x;
    return e;
}

// ---- the incremental search: values sorted once per row, set sums in Fenwick trees ------------

/// Count and sum of a set's elements.
struct Moments {
    double n = 0.0, s1 = 0.0;
    Moments operator-(const Moments& o) const { return {n - o.n, s1 - o.s1}; }
};

/// A subset of a row's values, indexed by the value's rank in the sorted row: prefix(v) gives the
/// count and sum of the members below v in O(log n).
class RankedSet {
public:
    explicit RankedSet(const std::vector<double>& sorted) : sorted_(sorted), n_(sorted.size() + 1, 0.0), s_(sorted.size() + 1, 0.0) {}
    void insert(std::size_t rank)
    {
        const double v = sorted_[rank];
        total_.n += 1.0;
        total_.s1 += v;
        square_sum_ += v * v;
        for (std::size_t i = rank + 1; i < n_.size(); i += i & (~i + 1)) {
            n_[i] += 1.0;
            s_[i] += v;
        }
    }
    /// Members with value < v.
    Moments below(double v) const
    {
        std::size_t k = static_cast<std::size_t>(std::lower_bound(sorted_.begin(), sorted_.end(), v) - sorted_.begin());
        Moments m;
        for (; k > 0; k -= k & (~k + 1)) {
            m.n += n_[k];
            m.s1 += s_[k];
        }
        return m;
    }
    const Moments& total() const { return total_; }
    double square_sum() const { return square_sum_; }

private:
    const std::vector<double>& sorted_;
    std::vector<double> n_, s_;
    Moments total_;
    double square_sum_ = 0.0;
};

/// A RankedSet's totals and prefix sums. Each side of a split is its own set, built by insertion
/// (never all minus the other side): on heavy-tailed scores a difference of sums would lose the
/// small side's error in rounding.
struct SetSums {
    const RankedSet* set = nullptr;
    Moments total;
    double square_sum = 0.0;
    Moments below(double v) const { return set->below(v); }
};

/// sum over the members x in [lo, hi) of |x - t|.
double abs_deviation(const SetSums& s, double lo, double hi, double t)
{
    auto at = [&](double v) {
        if (v == -std::numeric_limits<double>::infinity())
            return Moments{};
        if (v == std::numeric_limits<double>::infinity())
            return s.total;
        return s.below(v);
    };
    const double tc = std::min(std::max(t, lo), hi);
    const Moments l = at(lo), m = at(tc), h = at(hi);
    const Moments under = m - l, over = h - m;
    return (t * under.n - under.s1) + (over.s1 - t * over.n);
}

constexpr double kInf = std::numeric_limits<double>::infinity();

/// First-order binarization error of the set, from its sums: sum (x - mu)^2 - n alpha^2.
double first_order_error(const SetSums& s)
{
    const double n = s.total.n;
    if (n <= 0.0)
        return 0.0;
    const double mu = s.total.s1 / n;
    const double alpha = abs_deviation(s, -kInf, kInf, mu) / n;
    return std::max(0.0, s.square_sum - n * mu * mu - n * alpha * alpha);
}

/// Second-order (residual) binarization error. The residual r = x - mu1 - alpha1 sign(x - mu1) is
/// increasing in x on each side of mu1, so its mean and absolute deviation come from prefix sums.
double second_order_error(const SetSums& s)
{
    const double n = s.total.n;
    if (n <= 0.0)
        return 0.0;
    const double mu1 = s.total.s1 / n;
    const Moments lower = s.below(mu1);
    const double a1 = abs_deviation(s, -kInf, kInf, mu1) / n;
    const double residual_squares = std::max(0.0, s.square_sum - n * mu1 * mu1 - n * a1 * a1);
    const double upper_n = n - lower.n;
    const double mu2 = -a1 * (upper_n - lower.n) / n;
    const double dev = abs_deviation(s, mu1, kInf, mu1 + a1 + mu2) + abs_deviation(s, -kInf, mu1, mu1 - a1 + mu2);
    const double a2 = dev / n;
    return std::max(0.0, residual_squares - n * mu2 * mu2 - n * a2 * a2);
}

SetSums sums_of(const RankedSet& set) { return {&set, set.total(), set.square_sum()}; }

/// Sums per-row errors (rows, candidates) in row order: the same total on any number of threads.
std::vector<double> column_sums(const std::vector<double>& per_row, std::int64_t rows, std::size_t candidates)
{
    std::vector<double> total(candidates, 0.0);
    for (std::int64_t r = 0; r < rows; ++r)
        for (std::size_t c = 0; c < candidates; ++c)
            total[c] += per_row[static_cast<std::size_t>(r) * candidates + c];
    return total;
}

/// Sorts in one chunk per thread, then merges the chunks (a 4096-row block holds 524k keys).
void sort_in_parallel(std::vector<float>& v)
{
    const std::int64_t n = static_cast<std::int64_t>(v.size());
    const std::int64_t chunks = std::max<std::int64_t>(1, std::min<std::int64_t>(at::get_num_threads(), n / 65536));
    const std::int64_t width = (n + chunks - 1) / std::max<std::int64_t>(chunks, 1);
    at::parallel_for(0, chunks, 1, [&](std::int64_t c0, std::int64_t c1) {
        for (std::int64_t c = c0; c < c1; ++c)
            std::sort(v.begin() + std::min(n, c * width), v.begin() + std::min(n, (c + 1) * width));
    });
    for (std::int64_t c = 1; c < chunks; ++c)
        std::inplace_merge(v.begin(), v.begin() + std::min(n, c * width), v.begin() + std::min(n, (c + 1) * width));
}

std::size_t first_minimum(const std::vector<double>& errors)
{
    return static_cast<std::size_t>(std::min_element(errors.begin(), errors.end()) - errors.begin());
}

/// For each candidate p, the error of splitting each row's `member` columns at p (|S| < p:
/// concentrated, else sparse) with each side binarized to `order` (1 or 2), summed over rows.
std::vector<double> split_errors(const float* S, const float* V, std::int64_t rows, std::int64_t nb,
                                 const std::vector<bool>& member, const std::vector<float>& candidates, int order,
                                 bool reference)
{
    const std::size_t P = candidates.size();
    std::vector<double> per_row(static_cast<std::size_t>(rows) * P, 0.0);
    auto side_error = [&](const SetSums& set) { return order == 1 ? first_order_error(set) : second_order_error(set); };
    at::parallel_for(0, rows, 16, [&](std::int64_t r0, std::int64_t r1) {
        for (std::int64_t r = r0; r < r1; ++r) {
            double* out = per_row.data() + static_cast<std::size_t>(r) * P;
            std::vector<std::int64_t> members; // the row's columns in the set being split
            for (std::int64_t c = 0; c < nb; ++c)
                if (member[static_cast<std::size_t>(c)])
                    members.push_back(c);
            auto key = [&](std::int64_t c) { return std::fabs(S[r * nb + c]); };
            if (reference) {
                for (std::size_t t = 0; t < P; ++t) {
                    std::vector<double> concentrated, sparse;
                    for (std::int64_t c : members)
                        (key(c) < candidates[t] ? concentrated : sparse).push_back(V[r * nb + c]);
                    out[t] = residual_error(concentrated, order) + residual_error(sparse, order);
                }
                continue;
            }
            const std::size_t m = members.size();
            std::vector<std::size_t> by_value(m), by_key(m);
            std::iota(by_value.begin(), by_value.end(), 0);
            std::iota(by_key.begin(), by_key.end(), 0);
            std::sort(by_value.begin(), by_value.end(),
                      [&](std::size_t a, std::size_t b) { return V[r * nb + members[a]] < V[r * nb + members[b]]; });
            std::sort(by_key.begin(), by_key.end(), [&](std::size_t a, std::size_t b) { return key(members[a]) < key(members[b]); });
            std::vector<double> sorted(m);
            std::vector<std::size_t> rank(m);
            for (std::size_t i = 0; i < m; ++i) {
                sorted[i] = V[r * nb + members[by_value[i]]];
                rank[by_value[i]] = i;
            }
            // Concentrated sets (key < p) grow with p, sparse ones (key >= p) as p falls.
            RankedSet concentrated(sorted), sparse(sorted);
            std::size_t next = 0;
            for (std::size_t t = 0; t < P; ++t) {
                while (next < m && key(members[by_key[next]]) < candidates[t])
                    concentrated.insert(rank[by_key[next++]]);
                out[t] = side_error(sums_of(concentrated));
            }
            std::size_t last = m; // members by_key[last..] are in `sparse`
            for (std::size_t t = P; t-- > 0;) {
                while (last > 0 && key(members[by_key[last - 1]]) >= candidates[t])
                    sparse.insert(rank[by_key[--last]]);
                out[t] += side_error(sums_of(sparse));
            }
        }
    });
    return column_sums(per_row, rows, P);
}

} // namespace

BillmBlockChoice billm_search_block(const at::Tensor& scores_in, const at::Tensor& values_in, int max_salient_columns,
                                    bool split_salient, bool reference)
{
    const at::Tensor scores = scores_in.to(at::kFloat).contiguous(), values = values_in.to(at::kFloat).contiguous();
    const std::int64_t rows = scores.size(0), nb = scores.size(1);
    const float* S = scores.data_ptr<float>();
    const float* V = values.data_ptr<float>();
    BillmBlockChoice choice;

    // Columns by decreasing c_j = sum_i |S_ij| (ties: lower index first).
    std::vector<double> col_score(static_cast<std::size_t>(nb), 0.0);
    for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t c = 0; c < nb; ++c)
            col_score[static_cast<std::size_t>(c)] += std::fabs(S[r * nb + c]);
    choice.column_order.resize(static_cast<std::size_t>(nb));
    std::iota(choice.column_order.begin(), choice.column_order.end(), 0);
    std::stable_sort(choice.column_order.begin(), choice.column_order.end(),
                     [&](std::int64_t a, std::int64_t b) { return col_score[a] > col_score[b]; });

    // 1. The salient column count k: salient columns and the rest each binarized to second order
    //    (the authors' code scores this search so; METHODS-BEYOND.md's steps 3-4 would split the
    //    rest at a break point for every k, 81 times the work), the smallest total error wins.
    const std::size_t K = static_cast<std::size_t>(std::max<std::int64_t>(1, std::min<std::int64_t>(max_salient_columns, nb)));
    std::vector<double> per_row(static_cast<std::size_t>(rows) * K);
    at::parallel_for(0, rows, 16, [&](std::int64_t r0, std::int64_t r1) {
        std::vector<double> row(static_cast<std::size_t>(nb));
        for (std::int64_t r = r0; r < r1; ++r) {
            double* out = per_row.data() + static_cast<std::size_t>(r) * K;
            for (std::int64_t c = 0; c < nb; ++c)
                row[static_cast<std::size_t>(c)] = V[r * nb + c];
            if (reference) {
                for (std::size_t k = 1; k <= K; ++k) {
                    std::vector<double> salient, rest;
                    std::vector<bool> is_salient(static_cast<std::size_t>(nb), false);
                    for (std::size_t i = 0; i < k; ++i)
                        is_salient[static_cast<std::size_t>(choice.column_order[i])] = true;
                    for (std::int64_t c = 0; c < nb; ++c)
                        (is_salient[static_cast<std::size_t>(c)] ? salient : rest).push_back(row[static_cast<std::size_t>(c)]);
                    out[k - 1] = residual_error(salient, 2) + residual_error(rest, 2);
                }
                continue;
            }
            std::vector<std::size_t> order(static_cast<std::size_t>(nb));
            std::iota(order.begin(), order.end(), 0);
            std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return row[a] < row[b]; });
            std::vector<double> sorted(static_cast<std::size_t>(nb));
            std::vector<std::size_t> rank(static_cast<std::size_t>(nb));
            for (std::size_t i = 0; i < order.size(); ++i) {
                sorted[i] = row[order[i]];
                rank[order[i]] = i;
            }
            // Salient sets grow with k; the rest, columns k.. of the order, grow as k falls.
            RankedSet salient(sorted), rest(sorted);
            for (std::size_t k = 1; k <= K; ++k) {
                salient.insert(rank[static_cast<std::size_t>(choice.column_order[k - 1])]);
                out[k - 1] = second_order_error(sums_of(salient));
            }
            for (std::size_t i = static_cast<std::size_t>(nb); i > K; --i)
                rest.insert(rank[static_cast<std::size_t>(choice.column_order[i - 1])]);
            for (std::size_t k = K; k >= 1; --k) {
                out[k - 1] += second_order_error(sums_of(rest));
                rest.insert(rank[static_cast<std::size_t>(choice.column_order[k - 1])]);
            }
        }
    });
    choice.column_errors = column_sums(per_row, rows, K);
    choice.salient_columns = static_cast<int>(first_minimum(choice.column_errors) + 1);

    // 2. The break point p among the 0.10 .. 0.90 quantiles of |S| over the block, salient
    //    positions counted as zero; each side of p binarized to first order per row.
    std::vector<bool> salient_col(static_cast<std::size_t>(nb), false);
    for (int i = 0; i < choice.salient_columns; ++i)
        salient_col[static_cast<std::size_t>(choice.column_order[static_cast<std::size_t>(i)])] = true;
    {
        std::vector<float> keys(static_cast<std::size_t>(rows * nb));
        for (std::int64_t r = 0; r < rows; ++r)
            for (std::int64_t c = 0; c < nb; ++c)
                keys[static_cast<std::size_t>(r * nb + c)] = salient_col[static_cast<std::size_t>(c)] ? 0.0f : std::fabs(S[r * nb + c]);
        sort_in_parallel(keys);
        for (int t = 0; t < kBreakCandidates; ++t)
            choice.break_candidates.push_back(static_cast<float>(quantile_of_sorted(keys, 0.10 + 0.01 * t)));
    }
    std::vector<bool> non_salient(salient_col.size());
    for (std::size_t c = 0; c < salient_col.size(); ++c)
        non_salient[c] = !salient_col[c];
    choice.break_errors = split_errors(S, V, rows, nb, non_salient, choice.break_candidates, 1, reference);
    choice.break_point = choice.break_candidates[first_minimum(choice.break_errors)];

    // 3. CGB: the salient columns split the same way, at the 0.10 .. 0.90 quantiles of the
    //    non-zero |S| at salient positions, each side binarized to second order.
    if (split_salient) {
        std::vector<float> keys;
        for (std::int64_t r = 0; r < rows; ++r)
            for (std::int64_t c = 0; c < nb; ++c)
                if (salient_col[static_cast<std::size_t>(c)] && S[r * nb + c] != 0.0f)
                    keys.push_back(std::fabs(S[r * nb + c]));
        sort_in_parallel(keys);
        for (int t = 0; t < kBreakCandidates; ++t)
            choice.salient_break_candidates.push_back(static_cast<float>(quantile_of_sorted(keys, 0.10 + 0.01 * t)));
        choice.salient_break_errors =
            split_errors(S, V, rows, nb, salient_col, choice.salient_break_candidates, 2, reference);
        choice.salient_break_point = choice.salient_break_candidates[first_minimum(choice.salient_break_errors)];
    }
    return choice;
}

namespace {

/// mu (FP16) and alpha (FP16) of one group's values, or zeros for an empty group.
std::pair<float, float> fit_group(const std::vector<float>& xs)
{
    if (xs.empty())
        return {0.0f, 0.0f};
    double sum = 0.0;
    for (float x : xs) sum += x;
    const float mu = round_to_fp16(static_cast<float>(sum / static_cast<double>(xs.size())));
    double dev = 0.0;
    for (float x : xs) dev += std::fabs(static_cast<double>(x) - mu);
    return {mu, round_to_fp16(static_cast<float>(dev / static_cast<double>(xs.size())))};
}

float fp16(double v) { return round_to_fp16(static_cast<float>(v)); }

/// How a block-binary method fits its groups (the layout comes from its registry row).
struct Recipe {
    BlockBinaryLayout layout;
    bool refine = false;         ///< ARB's alternating refinement of every group
    bool hessian_metric = false; ///< ARB-X: then the scales in the block Hessian's metric
};

Recipe recipe_of(QuantMethod m, const BlockBinaryOptions& options)
{
    Recipe r;
    r.layout = block_layout_of(m, options);
    r.refine = m != QuantMethod::Billm;
    r.hessian_metric = m == QuantMethod::ArbX;
    return r;
}

/// The four groups of a block: salient columns (split into two under CGB), the rest at p.
enum Group : int { kSalientDense, kSalientSparse, kDense, kSparse, kGroups };
bool group_is_sparse(int g) { return g == kSalientSparse || g == kSparse; }
int group_order(int g) { return g == kSalientDense || g == kSalientSparse ? 2 : 1; }

/// Where a group's parameters sit: mean-and-scale slots (alpha1, mu1[, alpha2, mu2]), or the
/// row-column layout's row scales and column scales per order.
int mean_slot(int g) { return g == kSalientDense ? kSalientAlpha1 : g == kSalientSparse ? kSalientSparseAlpha1 : g == kDense ? kConcentratedAlpha : kSparseAlpha; }
int rc_row_slot(int g, int k) { return g == kSalientDense ? kRcSalientA1 + k : g == kSalientSparse ? kRcSalientSparseA1 + k : g == kDense ? kRcConcentratedA : kRcSparseA; }
int rc_column_slot(int g, int k) { return (group_is_sparse(g) ? kRcColumnSparse1 : kRcColumn1) + k; }

/// The block's masks: each weight's group (salient split at `salient_break` under CGB, the rest at `break_point`).
std::vector<signed char> group_map(const float* S, std::int64_t rows, std::int64_t nb, const bool* salient_col,
                                   bool split_salient, float salient_break, float break_point)
{
    std::vector<signed char> g(static_cast<std::size_t>(rows * nb));
    for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t c = 0; c < nb; ++c) {
            const float key = std::fabs(S[r * nb + c]);
            g[static_cast<std::size_t>(r * nb + c)] = static_cast<signed char>(
                salient_col[c] ? (split_salient && key >= salient_break ? kSalientSparse : kSalientDense)
                               : (key >= break_point ? kSparse : kDense));
        }
    return g;
}

/// The block's values of one row in one group, with their positions.
void gather(const float* w, const signed char* groups, std::int64_t nb, int g, std::vector<float>& xs,
            std::vector<std::int64_t>& positions)
{
    xs.clear();
    positions.clear();
    for (std::int64_t c = 0; c < nb; ++c)
        if (groups[c] == g) {
            xs.push_back(w[c]);
            positions.push_back(c);
        }
}

/// Quantizes the rows of one block with the searched groups, writing codes, row parameters and Q
/// (mean-and-scale layouts: BiLLM, ARB, ARB-X).
struct MeanScaleWriter {
    Recipe recipe;
    std::int64_t cols = 0, b0 = 0, nb = 0, block_index = 0, blocks = 0;
    const float* W = nullptr;          ///< (rows, nb) block values
    const signed char* groups = nullptr; ///< (rows, nb)
    const double* H = nullptr;         ///< (nb, nb) the block's Hessian (ARB-X)
    bool *sparse = nullptr, *sign1 = nullptr, *sign2 = nullptr; ///< (rows, cols)
    float* params = nullptr; ///< (rows, blocks, layout.row_params())
    float* Q = nullptr;      ///< (rows, nb)

    /// One order-1 group: parameters into p[slot], signs into s1.
    void order1(const std::vector<float>& xs, const std::vector<std::int64_t>& at, float* p, int slot, bool* s1) const
    {
        auto [mu, alpha] = fit_group(xs);
        if (recipe.refine && !xs.empty()) {
            OrderOneFit f = arb_refine_order1(xs, {mu, alpha}, kArbIterations);
            if (recipe.hessian_metric) {
                std::vector<double> b(xs.size());
                for (std::size_t i = 0; i < xs.size(); ++i)
                    b[i] = xs[i] - f.mu >= 0.0 ? 1.0 : -1.0;
                const OrderOneFit x = arbx_refine_order1(xs, b, H, nb, at, f, kArbIterations);
                if (std::isfinite(x.mu) && std::isfinite(x.alpha) && std::fabs(x.alpha) < 65504.0 && std::fabs(x.mu) < 65504.0)
                    f = x; // else keep ARB's fit: H gave the metric nothing to stand on
                const double flip = f.alpha < 0.0 ? -1.0 : 1.0; // -alpha with -B: the same values
                p[slot] = fp16(flip * f.alpha);
                p[slot + 1] = fp16(f.mu);
                for (std::size_t i = 0; i < xs.size(); ++i) // ARB-X keeps the signs it refined under
                    s1[at[i]] = flip * b[i] > 0.0;
                return;
            }
            mu = fp16(f.mu);
            alpha = fp16(f.alpha);
        }
        p[slot] = alpha;
        p[slot + 1] = mu;
        for (std::size_t i = 0; i < xs.size(); ++i)
            s1[at[i]] = binary_sign(xs[i], mu);
    }

    /// One order-2 group (slots alpha1, mu1, alpha2, mu2).
    void order2(const std::vector<float>& xs, const std::vector<std::int64_t>& at, float* p, int slot, bool* s1,
                bool* s2) const
    {
        // BiLLM's residual binarization: order 1, then order 1 of the residual.
        std::tie(p[slot + 1], p[slot]) = fit_group(xs);
        std::vector<float> residual = xs;
        for (float& x : residual)
            x -= binary_value(binary_sign(x, p[slot + 1]), p[slot + 1], p[slot]);
        std::tie(p[slot + 3], p[slot + 2]) = fit_group(residual);
        if (!recipe.refine || xs.empty()) {
            for (std::size_t i = 0; i < xs.size(); ++i) {
                s1[at[i]] = binary_sign(xs[i], p[slot + 1]);
                s2[at[i]] = binary_sign(residual[i], p[slot + 3]);
            }
            return;
        }
        // ARB of order 2 from there: one shared mean (stored as mu1, mu2 = 0), both scales.
        OrderTwoFit f = arb_refine_order2(xs, {static_cast<double>(p[slot + 1]) + p[slot + 3], p[slot], p[slot + 2]},
                                          kArbIterations);
        if (recipe.hessian_metric) {
            std::vector<double> b1(xs.size()), b2(xs.size());
            for (std::size_t i = 0; i < xs.size(); ++i)
                nearest_levels(xs[i], f, b1[i], b2[i]);
            const OrderTwoFit x = arbx_refine_order2(xs, b1, b2, H, nb, at, f, kArbIterations);
            if (std::isfinite(x.mu) && std::fabs(x.mu) < 65504.0 && std::fabs(x.alpha1) < 65504.0 &&
                std::fabs(x.alpha2) < 65504.0)
                f = x; // else keep ARB's fit
            const double f1 = f.alpha1 < 0.0 ? -1.0 : 1.0, f2 = f.alpha2 < 0.0 ? -1.0 : 1.0;
            p[slot] = fp16(f1 * f.alpha1);
            p[slot + 1] = fp16(f.mu);
            p[slot + 2] = fp16(f2 * f.alpha2);
            p[slot + 3] = 0.0f;
            for (std::size_t i = 0; i < xs.size(); ++i) {
                s1[at[i]] = f1 * b1[i] > 0.0;
                s2[at[i]] = f2 * b2[i] > 0.0;
            }
            return;
        }
        p[slot] = fp16(f.alpha1);
        p[slot + 1] = fp16(f.mu);
        p[slot + 2] = fp16(f.alpha2);
        p[slot + 3] = 0.0f;
        const bool split_group = slot == kSalientSparseAlpha1;
        for (std::size_t i = 0; i < xs.size(); ++i) { // the nearest of the four stored levels
            float best = INFINITY;
            for (bool a : {true, false})
                for (bool b : {true, false}) {
                    const float e = std::fabs(xs[i] - block_binary_value(recipe.layout, true, split_group, a, b, p, nullptr));
                    if (e < best) {
                        best = e;
                        s1[at[i]] = a;
                        s2[at[i]] = b;
                    }
                }
        }
    }

    void rows(std::int64_t r0, std::int64_t r1) const
    {
        std::vector<float> xs;
        std::vector<std::int64_t> at;
        std::unique_ptr<bool[]> s1(new bool[static_cast<std::size_t>(nb)]), s2(new bool[static_cast<std::size_t>(nb)]);
        const int np = recipe.layout.row_params();
        for (std::int64_t r = r0; r < r1; ++r) {
            const float* w = W + r * nb;
            const signed char* g = groups + r * nb;
            float* p = params + (r * blocks + block_index) * np;
            std::fill(s1.get(), s1.get() + nb, false);
            std::fill(s2.get(), s2.get() + nb, false);
            for (int grp = 0; grp < kGroups; ++grp) {
                if (grp == kSalientSparse && !recipe.layout.split_salient)
                    continue;
                gather(w, g, nb, grp, xs, at);
                if (group_order(grp) == 2)
                    order2(xs, at, p, mean_slot(grp), s1.get(), s2.get());
                else
                    order1(xs, at, p, mean_slot(grp), s1.get());
            }
            for (std::int64_t c = 0; c < nb; ++c) {
                const std::int64_t i = r * cols + b0 + c;
                const bool sal = g[c] == kSalientDense || g[c] == kSalientSparse, spa = group_is_sparse(g[c]);
                sparse[i] = spa;
                sign1[i] = s1[c];
                sign2[i] = sal && s2[c];
                Q[r * nb + c] = block_binary_value(recipe.layout, sal, spa, sign1[i], sign2[i], p, nullptr);
            }
        }
    }
};

/// ARB-RC on one block: each group fitted across the block's rows (row and column scales couple
/// them), the scales normalised (column scales of mean 1 per order), rounded to FP16, and every
/// weight at the nearest of its stored levels.
void write_row_column_block(const Recipe& recipe, const float* Wb, const signed char* groups, std::int64_t rows,
                            std::int64_t nb, std::int64_t cols, std::int64_t b0, std::int64_t block_index,
                            std::int64_t blocks, BlockBinaryCodes& codes, float* Q)
{
    const int np = recipe.layout.row_params();
    float* params = codes.params.data_ptr<float>();
    float* colp = codes.column_params.data_ptr<float>() + b0 * kRcColumnParams;
    for (int grp = 0; grp < kGroups; ++grp) {
        if (grp == kSalientSparse && !recipe.layout.split_salient)
            continue;
        std::unique_ptr<bool[]> mask(new bool[static_cast<std::size_t>(rows * nb)]);
        bool any = false;
        for (std::int64_t e = 0; e < rows * nb; ++e)
            any |= (mask[static_cast<std::size_t>(e)] = groups[e] == grp);
        if (!any)
            continue;
        const int order = group_order(grp);
        const RowColumnFit f = arb_rc_fit(Wb, mask.get(), rows, nb, order, kArbIterations);
        for (int k = 0; k < order; ++k) {
            double sum = 0.0, n = 0.0; // the column scales' mean over the group's columns
            for (std::int64_t c = 0; c < nb; ++c) {
                const double v = std::fabs(f.c[static_cast<std::size_t>(c * order + k)]);
                if (v > 0.0) {
                    sum += v;
                    n += 1.0;
                }
            }
            const double norm = n > 0.0 && sum > 0.0 ? sum / n : 1.0;
            // The levels +-a c (+-a' c') are the same set whatever the scales' signs: store |.|.
            for (std::int64_t r = 0; r < rows; ++r)
                params[(r * blocks + block_index) * np + rc_row_slot(grp, k)] =
                    static_cast<float>(std::fabs(f.a[static_cast<std::size_t>(r * order + k)]) * norm);
            for (std::int64_t c = 0; c < nb; ++c) {
                bool used = false;
                for (std::int64_t r = 0; r < rows && !used; ++r)
                    used = mask[static_cast<std::size_t>(r * nb + c)];
                if (used)
                    colp[c * kRcColumnParams + rc_column_slot(grp, k)] =
                        static_cast<float>(std::fabs(f.c[static_cast<std::size_t>(c * order + k)]) / norm);
            }
        }
    }
    // The scales as stored: FP16, or 8-bit codes against the block's largest row and column scale.
    float bases[2] = {0.0f, 0.0f};
    for (std::int64_t r = 0; r < rows; ++r)
        for (int k = 0; k < np; ++k)
            bases[0] = std::max(bases[0], params[(r * blocks + block_index) * np + k]);
    for (std::int64_t i = 0; i < nb * kRcColumnParams; ++i)
        bases[1] = std::max(bases[1], colp[i]);
    auto stored = [&](float v, int kind) {
        return recipe.layout.log8_scales ? log8_value(bases[kind], log8_code(v, bases[kind])) : round_to_fp16(v);
    };
    if (recipe.layout.log8_scales) {
        codes.scale_bases.data_ptr<float>()[block_index * 2] = bases[0];
        codes.scale_bases.data_ptr<float>()[block_index * 2 + 1] = bases[1];
    }
    for (std::int64_t r = 0; r < rows; ++r)
        for (int k = 0; k < np; ++k) {
            float& v = params[(r * blocks + block_index) * np + k];
            v = stored(v, 0);
        }
    for (std::int64_t i = 0; i < nb * kRcColumnParams; ++i)
        colp[i] = stored(colp[i], 1);
    bool *sparse = codes.sparse.data_ptr<bool>(), *sign1 = codes.sign1.data_ptr<bool>(), *sign2 = codes.sign2.data_ptr<bool>();
    at::parallel_for(0, rows, 16, [&](std::int64_t r0, std::int64_t r1) {
        for (std::int64_t r = r0; r < r1; ++r) {
            const float* p = params + (r * blocks + block_index) * np;
            for (std::int64_t c = 0; c < nb; ++c) {
                const int g = groups[r * nb + c];
                const bool sal = group_order(g) == 2, spa = group_is_sparse(g);
                const std::int64_t i = r * cols + b0 + c;
                const float w = Wb[r * nb + c];
                float best = INFINITY;
                for (bool a : {true, false})
                    for (bool b : {true, false}) {
                        if (!sal && !b)
                            continue; // order 1: the second sign stays false
                        const float e = std::fabs(w - block_binary_value(recipe.layout, sal, spa, a, sal && b, p,
                                                                          colp + c * kRcColumnParams));
                        if (e < best) {
                            best = e;
                            sign1[i] = a;
                            sign2[i] = sal && b;
                        }
                    }
                sparse[i] = spa;
                Q[r * nb + c] = block_binary_value(recipe.layout, sal, spa, sign1[i], sign2[i], p, colp + c * kRcColumnParams);
            }
        }
    });
}

/// ARB-X's break point: each candidate scored by tr(R S R^T) on the block's Hessian S, R the
/// residual of the searched values with the salient columns ARB-fitted (order 2, one group) and
/// the rest split at the candidate and binarized to first order, as the authors' code scores it.
std::vector<double> hessian_metric_break_errors(const float* V, const float* S, std::int64_t rows, std::int64_t nb,
                                                const bool* salient_col, const std::vector<float>& candidates,
                                                const at::Tensor& Hb)
{
    at::Tensor Rsal = at::zeros({rows, nb}, at::kFloat);
    float* rs = Rsal.data_ptr<float>();
    at::parallel_for(0, rows, 16, [&](std::int64_t r0, std::int64_t r1) {
        std::vector<float> xs;
        for (std::int64_t r = r0; r < r1; ++r) {
            xs.clear();
            for (std::int64_t c = 0; c < nb; ++c)
                if (salient_col[c])
                    xs.push_back(V[r * nb + c]);
            if (xs.empty())
                continue;
            const auto [mu1, a1] = fit_group(xs);
            std::vector<float> res = xs;
            for (float& x : res)
                x -= binary_value(binary_sign(x, mu1), mu1, a1);
            const auto [mu2, a2] = fit_group(res);
            const OrderTwoFit f = arb_refine_order2(xs, {static_cast<double>(mu1) + mu2, a1, a2}, kArbIterations);
            std::size_t i = 0;
            for (std::int64_t c = 0; c < nb; ++c)
                if (salient_col[c]) {
                    double b1 = 1.0, b2 = 1.0;
                    nearest_levels(xs[i], f, b1, b2);
                    rs[r * nb + c] = static_cast<float>(xs[i] - (f.mu + f.alpha1 * b1 + f.alpha2 * b2));
                    ++i;
                }
        }
    });
    const at::Tensor Hf = Hb.to(at::kFloat);
    // Candidates in batches: one GEMM of (batch * rows) x nb by nb x nb each, the residuals
    // built straight into it, each row's r^T (S r) summed in float64 and the rows added in order.
    constexpr std::int64_t kBatch = 8;
    const std::int64_t count = static_cast<std::int64_t>(candidates.size());
    const float* rs_ptr = Rsal.data_ptr<float>();
    std::vector<double> errors(candidates.size(), 0.0), per_row(static_cast<std::size_t>(kBatch * rows));
    at::Tensor R = at::empty({kBatch * rows, nb}, at::kFloat), RS = at::empty({kBatch * rows, nb}, at::kFloat);
    for (std::int64_t t0 = 0; t0 < count; t0 += kBatch) {
        const std::int64_t batch = std::min(kBatch, count - t0);
        float* rr = R.data_ptr<float>();
        at::parallel_for(0, batch * rows, 16, [&](std::int64_t i0, std::int64_t i1) {
            for (std::int64_t i = i0; i < i1; ++i) {
                const std::int64_t r = i % rows;
                const float p = candidates[static_cast<std::size_t>(t0 + i / rows)];
                float* out = rr + i * nb;
                double n[2] = {0, 0}, sum[2] = {0, 0}, dev[2] = {0, 0};
                for (std::int64_t c = 0; c < nb; ++c)
                    if (!salient_col[c]) {
                        const int k = std::fabs(S[r * nb + c]) >= p;
                        n[k] += 1;
                        sum[k] += V[r * nb + c];
                    }
                double mu[2];
                for (int k = 0; k < 2; ++k)
                    mu[k] = n[k] > 0 ? sum[k] / n[k] : 0.0;
                for (std::int64_t c = 0; c < nb; ++c)
                    if (!salient_col[c]) {
                        const int k = std::fabs(S[r * nb + c]) >= p;
                        dev[k] += std::fabs(V[r * nb + c] - mu[k]);
                    }
                for (std::int64_t c = 0; c < nb; ++c) {
                    if (salient_col[c]) {
                        out[c] = rs_ptr[r * nb + c];
                        continue;
                    }
                    const int k = std::fabs(S[r * nb + c]) >= p;
                    const double alpha = n[k] > 0 ? dev[k] / n[k] : 0.0, x = V[r * nb + c];
                    out[c] = static_cast<float>(x - (x - mu[k] >= 0.0 ? mu[k] + alpha : mu[k] - alpha));
                }
            }
        });
        at::Tensor Rb = R.narrow(0, 0, batch * rows), RSb = RS.narrow(0, 0, batch * rows);
        at::mm_out(RSb, Rb, Hf);
        const float* a = Rb.data_ptr<float>();
        const float* b = RSb.data_ptr<float>();
        at::parallel_for(0, batch * rows, 64, [&](std::int64_t i0, std::int64_t i1) {
            for (std::int64_t i = i0; i < i1; ++i) {
                double e = 0.0;
                for (std::int64_t c = 0; c < nb; ++c)
                    e += static_cast<double>(a[i * nb + c]) * b[i * nb + c];
                per_row[static_cast<std::size_t>(i)] = e;
            }
        });
        for (std::int64_t i = 0; i < batch * rows; ++i)
            errors[static_cast<std::size_t>(t0 + i / rows)] += per_row[static_cast<std::size_t>(i)];
    }
    return errors;
}

} // namespace

QuantizedLinear quantize_billm(const std::string& name, const at::Tensor& W_in, at::Tensor H,
                               const LayerQuantSettings& settings, const GptqOptions& options, double reference_energy)
{
    const auto start = std::chrono::steady_clock::now();
    const std::int64_t rows = W_in.size(0), cols = W_in.size(1); // checked by quantize_linear
    if (!H.defined())
        throw Error(name + ": " + to_string(settings.method) + " compensates each block's error through the Hessian: it needs calibration data");
    if (options.act_order)
        throw Error(name + ": " + to_string(settings.method) + " does not reorder columns (act-order is for the GPTQ solver)");
    if (options.groupsize > 0)
        throw Error(name + ": " + to_string(settings.method) + " keeps its parameters per block of columns; a group size does not apply (use 0)");
    if (options.blocksize < 2)
        throw Error(name + ": " + to_string(settings.method) + " needs blocks of at least 2 columns");

    QuantizedLinear q;
    q.name = name;
    q.rows = rows;
    q.cols = cols;
    q.settings = settings;
    const Recipe recipe = recipe_of(settings.method, settings.block_binary);
    if (recipe.layout.log8_scales && !recipe.layout.row_column)
        throw Error(name + ": scale_format log8 applies to arb-rc only (" + to_string(settings.method) +
                    " stores signed means)");

    at::Tensor W = W_in.to(at::kCPU, at::kFloat).clone();
    const HessianFactors factors = factor_hessian(H.to(at::kCPU, at::kDouble), options.percdamp, name);
    q.note = factors.note;
    W.masked_fill_(factors.dead.unsqueeze(0), 0.0f);
    // H stays: the output error's numerator needs a product with it (BiLLM has no GPTQ losses),
    // and ARB-X its blocks.
    const at::Tensor& U = factors.upper_inverse;
    const at::Tensor d = U.diagonal().contiguous(); // U_jj: saliency and compensation
    const at::Tensor saliency_d = settings.metric == SaliencyMetric::HessianInvDiag ? factors.inverse_diag : d;
    const at::Tensor Hd = recipe.hessian_metric ? H.to(at::kCPU, at::kDouble).contiguous() : at::Tensor();

    BlockBinaryCodes& codes = q.block_binary;
    codes.layout = recipe.layout;
    codes.block = options.blocksize;
    const std::int64_t blocks = codes.blocks(cols);
    codes.salient_cols = at::zeros({cols}, at::kBool);
    codes.sparse = at::zeros({rows, cols}, at::kBool);
    codes.sign1 = at::zeros({rows, cols}, at::kBool);
    codes.sign2 = at::zeros({rows, cols}, at::kBool);
    codes.params = at::zeros({rows, blocks, recipe.layout.row_params()}, at::kFloat);
    if (recipe.layout.row_column)
        codes.column_params = at::zeros({cols, kRcColumnParams}, at::kFloat);
    if (recipe.layout.log8_scales)
        codes.scale_bases = at::zeros({blocks, 2}, at::kFloat);
    q.dequantized = at::empty({rows, cols}, at::kFloat);

    for (std::int64_t b0 = 0, bi = 0; b0 < cols; b0 += codes.block, ++bi) {
        const std::int64_t b1 = std::min<std::int64_t>(b0 + codes.block, cols), nb = b1 - b0;
        const at::Tensor Wb = W.narrow(1, b0, nb).contiguous();
        // Element saliency within the block, on the weights as compensated so far.
        const at::Tensor Sb = settings.metric == SaliencyMetric::Magnitude
                                  ? Wb.abs()
                                  : (Wb.pow(2) / saliency_d.narrow(0, b0, nb).pow(2).unsqueeze(0)).contiguous();
        // The authors' code searches on S, or on the signed weights when its metric is magnitude.
        const at::Tensor Vb =
            settings.block_binary.search == BillmSearch::Scores && settings.metric != SaliencyMetric::Magnitude ? Sb : Wb;
        BillmBlockChoice choice =
            billm_search_block(Sb, Vb, options.billm_max_salient_columns, recipe.layout.split_salient);

        at::Tensor salient_col = at::zeros({nb}, at::kBool);
        for (int i = 0; i < choice.salient_columns; ++i)
            salient_col.data_ptr<bool>()[choice.column_order[static_cast<std::size_t>(i)]] = true;
        codes.salient_cols.narrow(0, b0, nb).copy_(salient_col);
        at::Tensor Hb;
        if (recipe.hessian_metric) {
            Hb = Hd.narrow(0, b0, nb).narrow(1, b0, nb).contiguous();
            const std::vector<double> errors =
                hessian_metric_break_errors(Vb.data_ptr<float>(), Sb.data_ptr<float>(), rows, nb,
                                            salient_col.data_ptr<bool>(), choice.break_candidates, Hb);
            choice.break_point = choice.break_candidates[static_cast<std::size_t>(
                std::min_element(errors.begin(), errors.end()) - errors.begin())];
        }
        const std::vector<signed char> groups =
            group_map(Sb.data_ptr<float>(), rows, nb, salient_col.data_ptr<bool>(), recipe.layout.split_salient,
                      choice.salient_break_point, choice.break_point);
        at::Tensor Qb = at::empty({rows, nb}, at::kFloat);
        if (recipe.layout.row_column) {
            write_row_column_block(recipe, Wb.data_ptr<float>(), groups.data(), rows, nb, cols, b0, bi, blocks, codes,
                                   Qb.data_ptr<float>());
        } else {
            MeanScaleWriter writer;
            writer.recipe = recipe;
            writer.cols = cols;
            writer.b0 = b0;
            writer.nb = nb;
            writer.block_index = bi;
            writer.blocks = blocks;
            writer.W = Wb.data_ptr<float>();
            writer.groups = groups.data();
            writer.H = Hb.defined() ? Hb.data_ptr<double>() : nullptr;
            writer.sparse = codes.sparse.data_ptr<bool>();
            writer.sign1 = codes.sign1.data_ptr<bool>();
            writer.sign2 = codes.sign2.data_ptr<bool>();
            writer.params = codes.params.data_ptr<float>();
            writer.Q = Qb.data_ptr<float>();
            at::parallel_for(0, rows, 16, [&](std::int64_t r0, std::int64_t r1) { writer.rows(r0, r1); });
        }
        q.dequantized.narrow(1, b0, nb).copy_(Qb);
        // The block is quantized at once, then its error goes into the later columns. The
        // authors' code scales each column's error by its own U_jj (diagonal). GPTQ's column walk
        // with Q fixed would take column j's error after the earlier columns' errors updated w_j:
        // (W - Q)_block = E U_block,block, one triangular solve (exact). tst_methods shows the
        // diagonal form can compensate worse than none on a correlated Hessian.
        if (b1 < cols) {
            const at::Tensor E = settings.block_binary.compensation == BillmCompensation::Exact
                                     ? at::linalg_solve_triangular(U.narrow(0, b0, nb).narrow(1, b0, nb), Wb - Qb,
                                                                   /*upper=*/true, /*left=*/false)
                                     : (Wb - Qb) / d.narrow(0, b0, nb).unsqueeze(0);
            W.narrow(1, b1, cols - b1).addmm_(E, U.narrow(0, b0, nb).narrow(1, b1, cols - b1), /*beta=*/1, /*alpha=*/-1);
        }
    }
    W = at::Tensor();

    q.salient = codes.salient_cols.unsqueeze(0).expand({rows, cols}).contiguous();
    q.salient_ratio = codes.salient_cols.to(at::kDouble).mean().item<double>();
    // The errors against W as the quantizer saw it (dead columns zeroed), in chunks of rows.
    const ErrorSums sums = error_sums(W_in, q.dequantized, factors.dead);
    q.weight_error = std::sqrt(sums.error) / std::max(std::sqrt(sums.weights), 1e-30);
    if (options.measure_output_error) {
        const at::Tensor Hf = H.to(at::kCPU, at::kFloat);
        double den = reference_energy;
        const double num = hessian_error_energy(W_in, q.dequantized, factors.dead, Hf, reference_energy >= 0.0 ? nullptr : &den);
        q.output_error = den > 0 ? num / den : 0.0;
    }
    q.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return q;
}

} // namespace pbllm
