// pbllm bench --suite quant: PB-GPTQ on LLaMA-7B-sized layers, slider previews, and whole-model
// quantization of the synthetic stories110M shape, against the machine's own GEMM rate.
#include "app/cli/bench_util.h"
#include "app/cli/cli_common.h"

#include "core/calibration.h"
#include "core/gptq.h"
#include "core/packed_checkpoint.h"
#include "core/preview.h"
#include "core/ptq.h"
#include "core/quant/registry.h"
#include "core/synthetic.h"
#include "core/tokenizer.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <QJsonArray>
#include <QJsonObject>
#include <QString>
#include <c10/core/InferenceMode.h>

#include <cstdio>
#include <set>

namespace pbllm::cli {
namespace {

/// H = 2/N X^T X for activations with the structure LLM layers show: correlated features and a few
/// outlier channels ~20x larger than the rest.
at::Tensor realistic_hessian(std::int64_t d, std::int64_t tokens)
{
    at::Generator g = at::detail::createCPUGenerator(11);
    const std::int64_t rank = 64;
    at::Tensor X = at::matmul(at::normal(0.0, 1.0, {tokens, rank}, g), at::normal(0.0, 1.0, {rank, d}, g)) * 0.3 +
                   at::normal(0.0, 1.0, {tokens, d}, g);
    X.narrow(1, 0, 8).mul_(20.0);
    return at::matmul(X.t(), X) * (2.0 / static_cast<double>(tokens));
}

struct LayerTiming {
    std::int64_t rows, cols;
    double seconds;
    double gflop;
    BitsPerWeight bits; ///< of the packed result
};

LayerTiming time_layer(std::int64_t rows, std::int64_t cols, const at::Tensor& H, int runs,
                       const LayerQuantSettings& settings = LayerQuantSettings{})
{
    at::Generator g = at::detail::createCPUGenerator(5);
    const at::Tensor W = at::normal(0.0, 0.02, {rows, cols}, g);
    GptqOptions o;
    o.measure_output_error = false; // a reporting extra, not part of the algorithm
    std::vector<double> times;
    QuantizedLinear q;
    for (int i = 0; i < runs; ++i)
        times.push_back(seconds_of([&] { q = quantize_linear("bench", W, H, settings, o); }));
    // Cholesky of H, its inverse, Cholesky of that (~5/3 d^3), lazy block updates (rows*d^2) and
    // the per-column updates inside blocks (rows*d*B).
    const double d = static_cast<double>(cols);
    const double flop = 5.0 / 3.0 * d * d * d + static_cast<double>(rows) * d * d + static_cast<double>(rows) * d * o.blocksize;
    return {rows, cols, median(times), flop / 1e9, bits_per_weight({pack_linear(q)})};
}

} // namespace

int run_methods_bench(int runs, bool json, const std::string& only)
{
    // Every post-training method of the registry on one LLaMA-7B attention-sized Linear, against
    // the GEMM rate measured in the same run. The FLOP count is GPTQ's (factorisation and the
    // block updates); a method's own searches come on top of it, so the fraction says how far
    // the extra work takes the method from the factorisation-bound solver.
    c10::InferenceMode inference;
    std::set<std::string> chosen;
    for (const QString& name : QString::fromStdString(only).split(',', Qt::SkipEmptyParts)) {
        const MethodInfo* m = find_method(name.trimmed().toStdString());
        if (!m || !m->quantize)
            throw UsageError{"--methods: '" + name.trimmed().toStdString() + "' is not one of " + method_names(true)};
        chosen.insert(m->name);
    }
    const Baselines base = measure_baselines(runs);
    const at::Tensor H = realistic_hessian(4096, 8192);
    QJsonArray rows;
    if (!json)
        std::printf("threads %d, medians of %d runs; fp32 GEMM 2048^2: %.1f GFLOP/s\n\n", at::get_num_threads(), runs,
                    base.matmul_gflops);
    for (const MethodInfo& m : methods()) {
        if (!m.quantize || (!chosen.empty() && !chosen.count(m.name)))
            continue;
        LayerQuantSettings s;
        s.method = m.id;
        const LayerTiming t = time_layer(4096, 4096, H, runs, s);
        const double fraction = t.gflop / t.seconds / base.matmul_gflops;
        rows.append(QJsonObject{{"method", m.name},
                                {"seconds", t.seconds},
                                {"gflop", t.gflop},
                                {"fraction_of_gemm", fraction},
                                {"bits_per_weight", bits_json(t.bits)}});
        if (!json)
            std::printf("%-8s 4096 x 4096  %6.2f s  (%.0f GFLOP of GPTQ-equivalent work: %.0f%% of the GEMM rate); "
                        "bits/weight headline %.3f, measured %.3f\n",
                        m.name, t.seconds, t.gflop, 100.0 * fraction, t.bits.headline, t.bits.measured);
    }
    if (json)
        print_json(QJsonObject{{"threads", at::get_num_threads()}, {"matmul_gflops", base.matmul_gflops}, {"methods", rows}});
    return 0;
}

int run_quant_bench(int runs, bool json)
{
    c10::InferenceMode inference;
    const Baselines base = measure_baselines(runs);
    const at::Tensor H = realistic_hessian(4096, 8192);
    std::vector<LayerTiming> layers;
    layers.push_back(time_layer(4096, 4096, H, runs));
    layers.push_back(time_layer(11008, 4096, H, std::max(1, runs / 2)));

    // Slider preview on 4096 x 4096: factor once, then previews at several ratios.
    const at::Tensor W = at::randn({4096, 4096}) * 0.02;
    double prepare = 0.0;
    std::unique_ptr<LayerPreview> preview;
    prepare = seconds_of([&] { preview = std::make_unique<LayerPreview>("bench", W, H, SaliencyMetric::Hessian); });
    std::vector<double> preview_ms;
    const double ratios[] = {0.05, 0.1, 0.2, 0.3, 0.5};
    for (int i = 0; i < runs; ++i)
        for (double r : ratios)
            preview_ms.push_back(1e3 * preview->preview(r, 8, Binarizer::Xnor).seconds);

    // Whole model, synthetic stories110M shape (random weights: time only).
    const Model model = make_synthetic_model(stories110m_shape());
    const at::Tensor ids = at::randint(32000, {32 * 256}, at::kLong);
    std::vector<int> tokens(ids.data_ptr<std::int64_t>(), ids.data_ptr<std::int64_t>() + ids.numel());
    const auto windows = sample_calibration_windows(tokens, 32, 256, 0);
    double whole = 0.0;
    whole = seconds_of([&] { quantize_model(model, windows, QuantPlan{}); });

    if (json) {
        QJsonArray l;
        for (const LayerTiming& t : layers)
            l.append(QJsonObject{{"rows", static_cast<double>(t.rows)},
                                 {"cols", static_cast<double>(t.cols)},
                                 {"seconds", t.seconds},
                                 {"gflop", t.gflop},
                                 {"fraction_of_gemm", t.gflop / t.seconds / base.matmul_gflops},
                                 {"bits_per_weight", bits_json(t.bits)}});
        print_json(QJsonObject{{"threads", at::get_num_threads()},
                               {"matmul_gflops", base.matmul_gflops},
                               {"pb_gptq_layers", l},
                               {"preview_prepare_seconds", prepare},
                               {"preview_ms_median", median(preview_ms)},
                               {"preview_ms_max", *std::max_element(preview_ms.begin(), preview_ms.end())},
                               {"synthetic_110m_seconds", whole},
                               {"synthetic_110m_calibration", "32 windows x 256 tokens"}});
        return 0;
    }
    std::printf("threads %d, medians of %d runs; fp32 GEMM 2048^2: %.1f GFLOP/s\n\n", at::get_num_threads(), runs,
                base.matmul_gflops);
    for (const LayerTiming& t : layers)
        std::printf("PB-GPTQ %5lld x %-5lld  %6.2f s  (%.0f GFLOP -> %.1f GFLOP/s, %.0f%% of the GEMM rate); "
                    "10%% salient packs to %.3f bits/weight measured\n",
                    static_cast<long long>(t.rows), static_cast<long long>(t.cols), t.seconds, t.gflop,
                    t.gflop / t.seconds, 100.0 * t.gflop / t.seconds / base.matmul_gflops, t.bits.measured);
    std::printf("preview 4096 x 4096: prepare %.2f s once, then %.1f ms median, %.1f ms max per slider move\n", prepare,
                median(preview_ms), *std::max_element(preview_ms.begin(), preview_ms.end()));
    std::printf("whole model, synthetic stories110M shape (84 Linears, 32 x 256 calibration tokens): %.1f s\n", whole);
    return 0;
}

} // namespace pbllm::cli
