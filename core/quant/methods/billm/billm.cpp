#include "core/quant/methods/billm/billm.h"

#include "core/error.h"
#include "core/quant/methods/arb/arb.h"
#include "core/saliency.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
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

} // namespace

BillmBlockChoice billm_search_block(const at::Tensor& scores_in, const at::Tensor& values_in, int max_salient_columns,
                                    bool reference)
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
    const std::size_t P = choice.break_candidates.size();
    per_row.assign(static_cast<std::size_t>(rows) * P, 0.0);
    at::parallel_for(0, rows, 16, [&](std::int64_t r0, std::int64_t r1) {
        for (std::int64_t r = r0; r < r1; ++r) {
            double* out = per_row.data() + static_cast<std::size_t>(r) * P;
            std::vector<std::int64_t> members; // the row's non-salient columns
            for (std::int64_t c = 0; c < nb; ++c)
                if (!salient_col[static_cast<std::size_t>(c)])
                    members.push_back(c);
            auto key = [&](std::int64_t c) { return std::fabs(S[r * nb + c]); };
            if (reference) {
                for (std::size_t t = 0; t < P; ++t) {
                    std::vector<double> concentrated, sparse;
                    for (std::int64_t c : members)
                        (key(c) < choice.break_candidates[t] ? concentrated : sparse).push_back(V[r * nb + c]);
                    out[t] = residual_error(concentrated, 1) + residual_error(sparse, 1);
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
                while (next < m && key(members[by_key[next]]) < choice.break_candidates[t])
                    concentrated.insert(rank[by_key[next++]]);
                out[t] = first_order_error(sums_of(concentrated));
            }
            std::size_t last = m; // members by_key[last..] are in `sparse`
            for (std::size_t t = P; t-- > 0;) {
                while (last > 0 && key(members[by_key[last - 1]]) >= choice.break_candidates[t])
                    sparse.insert(rank[by_key[--last]]);
                out[t] += first_order_error(sums_of(sparse));
            }
        }
    });
    choice.break_errors = column_sums(per_row, rows, P);
    choice.break_point = choice.break_candidates[first_minimum(choice.break_errors)];
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

/// Quantizes the rows of one block with the searched masks, writing codes, parameters and Q.
struct BlockWriter {
    std::int64_t cols = 0, b0 = 0, nb = 0, block_index = 0, blocks = 0;
    bool refine = false;      ///< ARB: refine every group's fit (method arb)
    const float* W = nullptr; ///< (rows, nb) block values
    const float* S = nullptr; ///< (rows, nb) scores
    const bool* salient_col = nullptr; ///< (nb)
    float break_point = 0.0f;
    bool *sparse = nullptr, *sign1 = nullptr, *sign2 = nullptr; ///< (rows, cols)
    float* params = nullptr; ///< (rows, blocks, kBlockParams)
    float* Q = nullptr;      ///< (rows, nb)

    /// A first-order group's FP16 (mu, alpha): the plain fit, refined by ARB when asked.
    std::pair<float, float> order1(const std::vector<float>& xs) const
    {
        const auto [mu, alpha] = fit_group(xs);
        if (!refine || xs.empty())
            return {mu, alpha};
        const OrderOneFit f = arb_refine_order1(xs, {mu, alpha}, kArbIterations);
        return {round_to_fp16(static_cast<float>(f.mu)), round_to_fp16(static_cast<float>(f.alpha))};
    }

    void rows(std::int64_t r0, std::int64_t r1) const
    {
        std::vector<float> salient, residual, concentrated, dispersed;
        for (std::int64_t r = r0; r < r1; ++r) {
            const float* w = W + r * nb;
            salient.clear();
            concentrated.clear();
            dispersed.clear();
            auto is_sparse = [&](std::int64_t c) { return std::fabs(S[r * nb + c]) >= break_point; };
            for (std::int64_t c = 0; c < nb; ++c)
                (salient_col[c] ? salient : is_sparse(c) ? dispersed : concentrated).push_back(w[c]);
            float* p = params + (r * blocks + block_index) * kBlockParams;
            // Salient columns: BiLLM's residual binarization (order 1, then order 1 of the residual).
            std::tie(p[kSalientMu1], p[kSalientAlpha1]) = fit_group(salient);
            residual = salient;
            for (float& x : residual)
                x -= binary_value(binary_sign(x, p[kSalientMu1]), p[kSalientMu1], p[kSalientAlpha1]);
            std::tie(p[kSalientMu2], p[kSalientAlpha2]) = fit_group(residual);
            if (refine && !salient.empty()) {
                // ARB of order 2 from there: one shared mean (stored as mu1, mu2 = 0), both scales.
                const OrderTwoFit f = arb_refine_order2(
                    salient, {static_cast<double>(p[kSalientMu1]) + p[kSalientMu2], p[kSalientAlpha1], p[kSalientAlpha2]},
                    kArbIterations);
                p[kSalientMu1] = round_to_fp16(static_cast<float>(f.mu));
                p[kSalientMu2] = 0.0f;
                p[kSalientAlpha1] = round_to_fp16(static_cast<float>(f.alpha1));
                p[kSalientAlpha2] = round_to_fp16(static_cast<float>(f.alpha2));
            }
            std::tie(p[kConcentratedMu], p[kConcentratedAlpha]) = order1(concentrated);
            std::tie(p[kSparseMu], p[kSparseAlpha]) = order1(dispersed);
            for (std::int64_t c = 0; c < nb; ++c) {
                const std::int64_t i = r * cols + b0 + c;
                const bool sal = salient_col[c], spa = !sal && is_sparse(c);
                const float mu1 = sal ? p[kSalientMu1] : spa ? p[kSparseMu] : p[kConcentratedMu];
                bool s1 = binary_sign(w[c], mu1);
                bool s2 = false;
                if (sal && refine) { // the nearest of the four stored levels
                    float best = INFINITY;
                    for (bool a : {true, false})
                        for (bool b : {true, false}) {
                            const float e = std::fabs(w[c] - block_binary_value(true, false, a, b, p));
                            if (e < best) {
                                best = e;
                                s1 = a;
                                s2 = b;
                            }
                        }
                } else if (sal) { // BiLLM: the residual's sign
                    const float rest = w[c] - binary_value(s1, p[kSalientMu1], p[kSalientAlpha1]);
                    s2 = binary_sign(rest, p[kSalientMu2]);
                }
                sparse[i] = spa;
                sign1[i] = s1;
                sign2[i] = s2;
                Q[r * nb + c] = block_binary_value(sal, spa, s1, s2, p);
            }
        }
    }
};

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
    const bool refine = settings.method == QuantMethod::Arb; // ARB's refinement of every group

    at::Tensor W = W_in.to(at::kCPU, at::kFloat).clone();
    const HessianFactors factors = factor_hessian(H.to(at::kCPU, at::kDouble), options.percdamp, name);
    q.note = factors.note;
    W.masked_fill_(factors.dead.unsqueeze(0), 0.0f);
    // H stays: the output error's numerator needs a product with it (BiLLM has no GPTQ losses).
    const at::Tensor& U = factors.upper_inverse;
    const at::Tensor d = U.diagonal().contiguous(); // U_jj: saliency and compensation
    const at::Tensor saliency_d = settings.metric == SaliencyMetric::HessianInvDiag ? factors.inverse_diag : d;

    BlockBinaryCodes& codes = q.block_binary;
    codes.block = options.blocksize;
    const std::int64_t blocks = codes.blocks(cols);
    codes.salient_cols = at::zeros({cols}, at::kBool);
    codes.sparse = at::zeros({rows, cols}, at::kBool);
    codes.sign1 = at::zeros({rows, cols}, at::kBool);
    codes.sign2 = at::zeros({rows, cols}, at::kBool);
    codes.params = at::zeros({rows, blocks, kBlockParams}, at::kFloat);
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
            options.billm_search == BillmSearch::Scores && settings.metric != SaliencyMetric::Magnitude ? Sb : Wb;
        const BillmBlockChoice choice = billm_search_block(Sb, Vb, options.billm_max_salient_columns);

        at::Tensor salient_col = at::zeros({nb}, at::kBool);
        for (int i = 0; i < choice.salient_columns; ++i)
            salient_col.data_ptr<bool>()[choice.column_order[static_cast<std::size_t>(i)]] = true;
        codes.salient_cols.narrow(0, b0, nb).copy_(salient_col);
        at::Tensor Qb = at::empty({rows, nb}, at::kFloat);
        BlockWriter writer;
        writer.cols = cols;
        writer.b0 = b0;
        writer.nb = nb;
        writer.block_index = bi;
        writer.refine = refine;
        writer.blocks = blocks;
        writer.W = Wb.data_ptr<float>();
        writer.S = Sb.data_ptr<float>();
        writer.salient_col = salient_col.data_ptr<bool>();
        writer.break_point = choice.break_point;
        writer.sparse = codes.sparse.data_ptr<bool>();
        writer.sign1 = codes.sign1.data_ptr<bool>();
        writer.sign2 = codes.sign2.data_ptr<bool>();
        writer.params = codes.params.data_ptr<float>();
        writer.Q = Qb.data_ptr<float>();
        at::parallel_for(0, rows, 16, [&](std::int64_t r0, std::int64_t r1) { writer.rows(r0, r1); });
        q.dequantized.narrow(1, b0, nb).copy_(Qb);
        // The block is quantized at once, then its error goes into the later columns. The
        // authors' code scales each column's error by its own U_jj (diagonal). GPTQ's column walk
        // with Q fixed would take column j's error after the earlier columns' errors updated w_j:
        // (W - Q)_block = E U_block,block, one triangular solve (exact). tst_methods shows the
        // diagonal form can compensate worse than none on a correlated Hessian.
        if (b1 < cols) {
            const at::Tensor E = options.billm_compensation == BillmCompensation::Exact
                                     ? at::linalg_solve_triangular(U.narrow(0, b0, nb).narrow(1, b0, nb), Wb - Qb,
                                                                   /*upper=*/true, /*left=*/false)
                                     : (Wb - Qb) / d.narrow(0, b0, nb).unsqueeze(0);
            W.narrow(1, b1, cols - b1).addmm_(E, U.narrow(0, b0, nb).narrow(1, b1, cols - b1), /*beta=*/1, /*alpha=*/-1);
        }
    }
    W = at::Tensor();

    q.salient = codes.salient_cols.unsqueeze(0).expand({rows, cols}).contiguous();
    q.salient_ratio = codes.salient_cols.to(at::kDouble).mean().item<double>();
    at::Tensor original = W_in.to(at::kCPU, at::kFloat).clone();
    original.masked_fill_(factors.dead.unsqueeze(0), 0.0f);
    const at::Tensor diff = original - q.dequantized;
    q.weight_error = std::sqrt(diff.pow(2).sum(at::kDouble).item<double>()) /
                     std::max(std::sqrt(original.pow(2).sum(at::kDouble).item<double>()), 1e-30);
    if (options.measure_output_error) {
        const at::Tensor Hf = H.to(at::kCPU, at::kFloat);
        auto energy = [&](const at::Tensor& A) { return (at::matmul(A, Hf) * A).sum(at::kDouble).item<double>(); };
        const double den = reference_energy >= 0.0 ? reference_energy : energy(original);
        q.output_error = den > 0 ? energy(diff) / den : 0.0;
    }
    q.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return q;
}

} // namespace pbllm
