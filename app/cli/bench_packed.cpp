// pbllm bench --suite packed: the same quantized weights run three ways in one run: packed (the
// packed kernels, FP16 embedding and head), dequantized float32, and dequantized FP16 read by the
// plain-loop decoder; batch-1 generation and perplexity throughput, bytes streamed per token and
// the fraction of the machine's measured read bandwidth.
#include "app/cli/bench_util.h"
#include "app/cli/cli_common.h"

#include "core/decoder.h"
#include "core/error.h"
#include "core/evaluation.h"
#include "core/generation.h"
#include "core/llama.h"
#include "core/model_io.h"
#include "core/gptq.h"
#include "core/kernels/matvec.h"
#include "core/packed_runtime.h"
#include "core/synthetic.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <QJsonArray>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <cstdio>

namespace pbllm::cli {
namespace {

struct Variant {
    std::string name;
    Model model;
    DecoderOptions options;
    double bytes_per_token = 0.0; ///< weights read by one decoding step (Linears + head)
    double gen_tokens_per_second = 0.0, eval_tokens_per_second = 0.0;
};

/// W quantized round-to-nearest with magnitude saliency at `ratio` salient 8-bit: the same
/// storage as PB-GPTQ, far quicker to make (speed benchmarks need the layout, not the quality).
QuantizedLinear quantize_for_speed(const std::string& name, const at::Tensor& W, double ratio)
{
    LayerQuantSettings s;
    s.salient_ratio = ratio;
    s.metric = SaliencyMetric::Magnitude;
    s.method = QuantMethod::Rtn;
    GptqOptions o;
    o.measure_output_error = false;
    return quantize_linear(name, W, at::Tensor(), s, o);
}

/// A SYNTHETIC model of `shape` whose Linears are quantized (round-to-nearest, magnitude
/// saliency: the same storage as PB-GPTQ, far quicker to make) at `ratio` salient 8-bit:
/// packed, and dequantized in float32 and FP16.
std::vector<Variant> synthetic_variants(const ModelConfig& shape, double ratio)
{
    Model dense = make_synthetic_model(shape);
    Model packed = dense;
    packed.tok_embeddings = dense.tok_embeddings.to(at::kHalf);
    packed.output = dense.output.to(at::kHalf);
    packed.final_norm = dense.final_norm.to(at::kHalf);
    double packed_linear_bytes = 0.0, linear_weights = 0.0;
    for (int l = 0; l < shape.n_layers; ++l) {
        DecoderLayer& d = dense.layers[l];
        DecoderLayer& p = packed.layers[l];
        p.attn_norm = d.attn_norm.to(at::kHalf);
        p.ffn_norm = d.ffn_norm.to(at::kHalf);
        for (LinearKind k : kAllLinearKinds) {
            const std::string name = linear_name(l, k);
            const QuantizedLinear q = quantize_for_speed(name, d.weight(k), ratio);
            p.packed[static_cast<int>(k)] = build_packed_weights(pack_linear(q), name);
            p.weight(k) = at::Tensor();
            d.weight(k) = q.dequantized;
            packed_linear_bytes += static_cast<double>(p.packed[static_cast<int>(k)]->resident_bytes());
            linear_weights += static_cast<double>(q.rows * q.cols);
        }
        std::fprintf(stderr, "\rquantizing the synthetic model: layer %d/%d", l + 1, shape.n_layers);
    }
    std::fprintf(stderr, "\n");
    const double head = static_cast<double>(shape.vocab_size) * shape.dim;
    std::vector<Variant> v;
    DecoderOptions int8;
    int8.activations = kernels::PackedActivations::Int8;
    DecoderOptions int8_head = int8;
    int8_head.int8_head = true;
    v.push_back({"packed", packed, {}, packed_linear_bytes + 2 * head});
    v.push_back({"packed-int8", packed, int8, packed_linear_bytes + 2 * head});
    v.push_back({"packed-int8+head", packed, int8_head, packed_linear_bytes + head});
    v.push_back({"float32", dense, {}, 4 * (linear_weights + head)});
    v.push_back({"fp16", dense.to(at::kCPU, at::kHalf), {}, 2 * (linear_weights + head)});
    return v;
}

/// One 4096 x 4096 Linear (LLaMA-7B's attention shape) on one thread: nanoseconds and CPU
/// cycles are what matter on 2 cores, where the kernels are compute-bound.
struct KernelBench {
    struct Packed {
        std::string kernel;
        double ns_per_weight = 0.0, int8_ns_per_weight = 0.0;
    };
    std::vector<Packed> packed; ///< every packed kernel this CPU has; the preferred one last
    double f32_ns_per_weight = 0.0, f16_ns_per_weight = 0.0;
    double resident_bits = 0.0;
    /// The preferred kernel on all threads over copies of the matrix too many to stay in any cache
    /// (as in decoding, where each Linear is read once per token), and FP16 rows the same way.
    struct FromMemory {
        double packed_ns = 0.0, packed_int8_ns = 0.0, f16_ns = 0.0; ///< per weight
        double packed_gbps = 0.0, packed_int8_gbps = 0.0, f16_gbps = 0.0;
        std::int64_t copies = 0;
    } from_memory;
    const Packed& preferred() const { return packed.back(); }
};

KernelBench bench_kernels(int runs, double ratio)
{
    const std::int64_t n = 4096;
    const QuantizedLinear q = quantize_for_speed("bench", at::randn({n, n}) * 0.02, ratio);
    const PackedWeightsPtr W = build_packed_weights(pack_linear(q), "bench");
    const at::Tensor f32 = q.dequantized.contiguous(), f16 = f32.to(at::kHalf);
    const at::Tensor x = at::randn({n});
    std::vector<float> y(static_cast<std::size_t>(n));
    kernels::PackedInput in;
    // ns per weight of `count` matvecs, matvec(c) doing the c-th (medians of `runs`).
    auto ring_ns = [&](std::int64_t count, const std::function<void(std::int64_t)>& matvec) {
        return 1.0 / median_rate(runs, [&] {
                   return static_cast<double>(count) / seconds_of([&] {
                       for (std::int64_t c = 0; c < count; ++c)
                           matvec(c);
                   });
               }) / static_cast<double>(n * n) * 1e9;
    };
    auto per_weight = [&](const std::function<void()>& matvec) {
        return ring_ns(20, [&](std::int64_t) { matvec(); });
    };
    KernelBench k;
    std::vector<kernels::PackedKernel> available = kernels::available_packed_kernels();
    std::stable_partition(available.begin(), available.end(), // the preferred one last
                          [](kernels::PackedKernel c) { return c != kernels::preferred_packed_kernel(); });
    for (kernels::PackedKernel kernel : available) {
        auto time = [&](kernels::PackedActivations precision) {
            in.precision = precision;
            return per_weight([&] {
                kernels::prepare_packed_input(*W, x.data_ptr<float>(), in);
                kernels::packed_matvec_rows(*W, in, y.data(), 0, n, kernel);
            });
        };
        k.packed.push_back({kernels::packed_kernel_name(kernel), time(kernels::PackedActivations::Float32),
                            time(kernels::PackedActivations::Int8)});
    }
    k.f32_ns_per_weight = per_weight([&] {
        kernels::matvec_rows(kernels::WeightFormat::F32, f32.data_ptr(), x.data_ptr<float>(), y.data(), n, 0, n);
    });
    k.f16_ns_per_weight = per_weight([&] {
        kernels::matvec_rows(kernels::WeightFormat::F16, f16.data_ptr(), x.data_ptr<float>(), y.data(), n, 0, n);
    });
    k.resident_bits = resident_bits_per_weight(*W);

    // From memory: enough copies to exceed the last-level cache many times over (256 MiB).
    const auto bytes = static_cast<double>(W->resident_bytes());
    const auto copies = static_cast<std::int64_t>(std::ceil(256.0 * (1 << 20) / bytes));
    std::vector<kernels::PackedWeights> ring(static_cast<std::size_t>(copies), *W);
    std::vector<at::Tensor> f16_ring;
    for (std::int64_t c = 0; c < std::max<std::int64_t>(2, copies * static_cast<std::int64_t>(bytes) / (2 * n * n)); ++c)
        f16_ring.push_back(f16.clone());
    auto packed_ring = [&](kernels::PackedActivations precision) {
        in.precision = precision;
        return ring_ns(copies, [&](std::int64_t c) {
            packed_matvec(ring[static_cast<std::size_t>(c)], x.data_ptr<float>(), y.data(), in);
        });
    };
    k.from_memory.copies = copies;
    k.from_memory.packed_ns = packed_ring(kernels::PackedActivations::Float32);
    k.from_memory.packed_int8_ns = packed_ring(kernels::PackedActivations::Int8);
    k.from_memory.f16_ns = ring_ns(static_cast<std::int64_t>(f16_ring.size()), [&](std::int64_t c) {
        dense_matvec(f16_ring[static_cast<std::size_t>(c)], x.data_ptr<float>(), y.data());
    });
    const double packed_bytes_per_weight = bytes / static_cast<double>(n * n);
    k.from_memory.packed_gbps = packed_bytes_per_weight / k.from_memory.packed_ns;
    k.from_memory.packed_int8_gbps = packed_bytes_per_weight / k.from_memory.packed_int8_ns;
    k.from_memory.f16_gbps = 2.0 / k.from_memory.f16_ns;
    return k;
}

/// The kernel lines of the packed suite, shared with --suite kernels.
void print_kernel_bench(const KernelBench& kb)
{
    std::printf("one 4096 x 4096 matvec repeated (its weights stay in cache), one thread, ns/weight: float32 %.3f, fp16 %.3f; packed (%.2f bits resident):",
                kb.f32_ns_per_weight, kb.f16_ns_per_weight, kb.resident_bits);
    for (const KernelBench::Packed& p : kb.packed)
        std::printf(" %s %.3f (x%.1f of float32), int8 activations %.3f;", p.kernel.c_str(), p.ns_per_weight,
                    kb.f32_ns_per_weight / p.ns_per_weight, p.int8_ns_per_weight);
    const KernelBench::FromMemory& m = kb.from_memory;
    std::printf("\nthe same over %lld copies (read from memory, as in decoding), %d threads, ns/weight (GB/s streamed): packed %.3f (%.1f), int8 "
                "activations %.3f (%.1f); fp16 %.3f (%.1f)\n",
                static_cast<long long>(m.copies), at::get_num_threads(), m.packed_ns, m.packed_gbps, m.packed_int8_ns,
                m.packed_int8_gbps, m.f16_ns, m.f16_gbps);
}

QJsonObject kernel_bench_json(const KernelBench& kb)
{
    QJsonArray packed_kernels;
    for (const KernelBench::Packed& p : kb.packed)
        packed_kernels.append(QJsonObject{{"kernel", QString::fromStdString(p.kernel)},
                                          {"ns_per_weight", p.ns_per_weight},
                                          {"int8_ns_per_weight", p.int8_ns_per_weight}});
    const KernelBench::FromMemory& m = kb.from_memory;
    return QJsonObject{{"packed", packed_kernels},
                       {"f32_ns_per_weight", kb.f32_ns_per_weight},
                       {"f16_ns_per_weight", kb.f16_ns_per_weight},
                       {"resident_bits_per_weight", kb.resident_bits},
                       {"from_memory_all_threads",
                        QJsonObject{{"copies", static_cast<double>(m.copies)},
                                    {"packed_ns_per_weight", m.packed_ns},
                                    {"packed_int8_ns_per_weight", m.packed_int8_ns},
                                    {"f16_ns_per_weight", m.f16_ns},
                                    {"packed_gbps", m.packed_gbps},
                                    {"packed_int8_gbps", m.packed_int8_gbps},
                                    {"f16_gbps", m.f16_gbps}}}};
}

/// Per-token log-probabilities of one logits row, in double.
std::vector<double> log_probs(const float* logits, int n)
{
    const double top = *std::max_element(logits, logits + n);
    double sum = 0.0;
    for (int i = 0; i < n; ++i)
        sum += std::exp(logits[i] - top);
    const double log_sum = top + std::log(sum);
    std::vector<double> out(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i)
        out[static_cast<std::size_t>(i)] = logits[i] - log_sum;
    return out;
}

/// sum_v P(v) (log P(v) - log Q(v)).
double kl_divergence(const std::vector<double>& log_p, const std::vector<double>& log_q)
{
    double kl = 0.0;
    for (std::size_t i = 0; i < log_p.size(); ++i)
        kl += std::exp(log_p[i]) * (log_p[i] - log_q[i]);
    return kl;
}

} // namespace

int run_packed_quality(const std::string& file, const std::string& text_path, int max_windows, int gen_tokens, bool json)
{
    c10::InferenceMode inference;
    LoadOptions options;
    const Model dense = load_model(file, options);
    options.packed = true;
    const Model packed = load_model(file, options);
    const Tokenizer tok = tokenizer_for(packed);
    const std::vector<int> ids = tok.encode(read_text_file(text_path));
    const int seqlen = std::min(dense.config.max_seq_len, 256), vocab = dense.config.vocab_size;
    std::int64_t windows = static_cast<std::int64_t>(ids.size()) / seqlen;
    if (max_windows > 0)
        windows = std::min<std::int64_t>(windows, max_windows);
    if (windows == 0)
        throw Error(text_path + ": fewer tokens than one window of " + std::to_string(seqlen));

    // The batched path (perplexity, prompt processing): packed against dequantized, per window.
    PerplexitySettings ps;
    ps.seqlen = seqlen;
    ps.max_windows = static_cast<int>(windows);
    const EvalResult eval_dense = evaluate_perplexity(dense, ids, ps), eval_packed = evaluate_perplexity(packed, ids, ps);
    double batched_kl = 0.0;
    for (std::int64_t w = 0; w < windows; ++w) {
        const std::vector<std::int64_t> window(ids.begin() + w * seqlen, ids.begin() + (w + 1) * seqlen);
        const at::Tensor t = at::tensor(window).view({1, seqlen});
        const at::Tensor a = at::log_softmax(forward(dense, t)[0].to(at::kDouble), -1);
        const at::Tensor b = at::log_softmax(forward(packed, t)[0].to(at::kDouble), -1);
        batched_kl += (a.exp() * (a - b)).sum().item<double>();
    }
    batched_kl /= static_cast<double>(windows * seqlen);

    // The decoder (generation), teacher-forced over the same windows: dequantized, packed
    // float32 and packed int8 activations; KL divergence to the dequantized decoder.
    struct Way {
        std::string name;
        const Model* model;
        DecoderOptions options;
        double nll = 0.0, kl = 0.0;
        std::vector<int> greedy;
        int first_divergence = -1;
    };
    DecoderOptions int8, int8_head, head_only;
    int8.activations = int8_head.activations = kernels::PackedActivations::Int8;
    int8_head.int8_head = head_only.int8_head = true;
    std::vector<Way> ways = {{"dequantized", &dense, {}, 0.0, 0.0, {}, -1},
                             {"packed", &packed, {}, 0.0, 0.0, {}, -1},
                             {"packed-int8", &packed, int8, 0.0, 0.0, {}, -1},
                             {"int8-head", &packed, head_only, 0.0, 0.0, {}, -1},
                             {"int8+head", &packed, int8_head, 0.0, 0.0, {}, -1}};
    std::vector<std::unique_ptr<Decoder>> decoders;
    for (const Way& w : ways)
        decoders.push_back(make_decoder(*w.model, DecoderBackend::Cpu, seqlen, w.options));
    std::int64_t predictions = 0;
    for (std::int64_t w = 0; w < windows; ++w) {
        for (auto& d : decoders)
            d->reset();
        for (int t = 0; t + 1 < seqlen; ++t) {
            const int token = ids[static_cast<std::size_t>(w * seqlen + t)];
            const int target = ids[static_cast<std::size_t>(w * seqlen + t + 1)];
            std::vector<double> reference;
            for (std::size_t i = 0; i < ways.size(); ++i) {
                const std::vector<double> lp = log_probs(decoders[i]->step(token), vocab);
                if (i == 0)
                    reference = lp;
                ways[i].nll -= lp[static_cast<std::size_t>(target)];
                ways[i].kl += kl_divergence(reference, lp);
            }
            ++predictions;
        }
        std::fprintf(stderr, "\rteacher-forced decoding: window %lld/%lld", static_cast<long long>(w + 1),
                     static_cast<long long>(windows));
    }
    std::fprintf(stderr, "\n");
    GenerationSettings gs;
    gs.max_new_tokens = gen_tokens;
    gs.stop_at_eos = false;
    for (Way& w : ways) {
        gs.decoder = w.options;
        w.greedy = generate(*w.model, tok, "Once upon a time", gs).tokens;
        const auto mismatch = std::mismatch(w.greedy.begin(), w.greedy.end(), ways[0].greedy.begin(), ways[0].greedy.end());
        w.first_divergence = mismatch.first == w.greedy.end() ? -1 : static_cast<int>(mismatch.first - w.greedy.begin());
    }
    if (json) {
        QJsonArray rows;
        for (const Way& w : ways)
            rows.append(QJsonObject{{"name", QString::fromStdString(w.name)},
                                    {"decoder_ppl", std::exp(w.nll / static_cast<double>(predictions))},
                                    {"kl_to_dequantized", w.kl / static_cast<double>(predictions)},
                                    {"greedy_first_divergence", w.first_divergence}});
        print_json(QJsonObject{{"file", QString::fromStdString(file)},
                               {"text", QString::fromStdString(text_path)},
                               {"windows", static_cast<double>(windows)},
                               {"seqlen", seqlen},
                               {"eval_ppl_dequantized", eval_dense.ppl},
                               {"eval_ppl_packed", eval_packed.ppl},
                               {"eval_kl_packed_to_dequantized", batched_kl},
                               {"greedy_tokens", gen_tokens},
                               {"decoders", rows}});
        return 0;
    }
    std::printf("%s on %s: %lld windows of %d tokens\n", file.c_str(), text_path.c_str(),
                static_cast<long long>(windows), seqlen);
    std::printf("batched path: perplexity dequantized %.4f, packed %.4f (%+.4f%%), KL packed to dequantized %.2e "
                "nats/token\n",
                eval_dense.ppl, eval_packed.ppl, 100 * (eval_packed.ppl / eval_dense.ppl - 1), batched_kl);
    std::printf("decoder, teacher-forced:\n");
    for (const Way& w : ways) {
        std::printf("  %-12s perplexity %.4f  KL to dequantized %.2e nats/token  greedy %d tokens: ", w.name.c_str(),
                    std::exp(w.nll / static_cast<double>(predictions)), w.kl / static_cast<double>(predictions),
                    gen_tokens);
        if (w.first_divergence < 0)
            std::printf("identical\n");
        else
            std::printf("first differs at token %d\n", w.first_divergence);
    }
    return 0;
}

int run_kernel_bench(int runs, double ratio, bool json)
{
    c10::InferenceMode inference;
    const Baselines base = measure_baselines(runs);
    const KernelBench kb = bench_kernels(runs, ratio);
    if (json) {
        print_json(QJsonObject{{"salient_ratio", ratio},
                               {"threads", at::get_num_threads()},
                               {"packed_kernel", kernels::packed_kernel_name()},
                               {"runs", runs},
                               {"memory_gbps", base.memory_gbps},
                               {"kernel_4096", kernel_bench_json(kb)}});
        return 0;
    }
    std::printf("%.0f%% salient 8-bit, random weights; medians of %d runs, packed kernel %s\nmemory read %.1f GB/s "
                "(%d threads)\n",
                100 * ratio, runs, kernels::packed_kernel_name(), base.memory_gbps, at::get_num_threads());
    print_kernel_bench(kb);
    return 0;
}

int run_packed_bench(int runs, int gen_tokens, const std::string& shape_name, int layers, double ratio, bool json)
{
    c10::InferenceMode inference;
    ModelConfig shape = synthetic_shape(shape_name);
    if (layers > 0)
        shape.n_layers = layers;
    const Baselines base = measure_baselines(runs);
    const KernelBench kb = bench_kernels(runs, ratio);
    std::vector<Variant> variants = synthetic_variants(shape, ratio);
    const int tokens = std::min(gen_tokens, shape.max_seq_len - 1);
    const int seqlen = std::min(shape.max_seq_len, 256), windows = 4;
    const at::Tensor ids = at::randint(shape.vocab_size, {windows * seqlen}, at::kLong);
    const std::vector<int> text(ids.data_ptr<std::int64_t>(), ids.data_ptr<std::int64_t>() + ids.numel());
    PerplexitySettings ps;
    ps.seqlen = seqlen;
    ps.max_windows = windows;
    // Interleaved: each run measures every variant once, so a busy moment hits them alike.
    std::vector<std::vector<double>> gen(variants.size()), eval(variants.size());
    std::vector<std::unique_ptr<Decoder>> decoders;
    for (const Variant& v : variants)
        decoders.push_back(make_decoder(v.model, DecoderBackend::Cpu, tokens + 1, v.options));
    for (int run = 0; run <= runs; ++run) {
        for (std::size_t i = 0; i < variants.size(); ++i) {
            Decoder& d = *decoders[i];
            d.reset();
            const double s = seconds_of([&] {
                int token = 1;
                for (int t = 0; t < tokens; ++t) {
                    const float* logits = d.step(token);
                    token = static_cast<int>(std::max_element(logits, logits + shape.vocab_size) - logits);
                }
            });
            // Evaluation runs the tiled float32 product: int8 activations and FP16 do not change it.
            const bool evaluated = variants[i].name == "packed" || variants[i].name == "float32";
            const double e = evaluated ? evaluate_perplexity(variants[i].model, text, ps).tokens_per_second : 0.0;
            if (run > 0) { // the first is a warm-up
                gen[i].push_back(tokens / s);
                eval[i].push_back(e);
            }
        }
        std::fprintf(stderr, "\rrun %d/%d", run, runs);
    }
    std::fprintf(stderr, "\n");
    for (std::size_t i = 0; i < variants.size(); ++i) {
        variants[i].gen_tokens_per_second = median(gen[i]);
        variants[i].eval_tokens_per_second = median(eval[i]);
    }
    const Variant& f32 = variants[3];
    if (json) {
        QJsonArray rows;
        for (const Variant& v : variants)
            rows.append(QJsonObject{{"name", QString::fromStdString(v.name)},
                                    {"gen_tokens_per_second", v.gen_tokens_per_second},
                                    {"gen_over_float32", v.gen_tokens_per_second / f32.gen_tokens_per_second},
                                    {"eval_tokens_per_second", v.eval_tokens_per_second},
                                    {"eval_over_float32", v.eval_tokens_per_second / f32.eval_tokens_per_second},
                                    {"bytes_per_token", v.bytes_per_token},
                                    {"fraction_of_memory_bandwidth",
                                     v.gen_tokens_per_second * v.bytes_per_token / 1e9 / base.memory_gbps}});
        print_json(QJsonObject{{"synthetic", true},
                               {"shape", QString::fromStdString(shape_name)},
                               {"layers", shape.n_layers},
                               {"salient_ratio", ratio},
                               {"threads", at::get_num_threads()},
                               {"packed_kernel", kernels::packed_kernel_name()},
                               {"runs", runs},
                               {"gen_tokens", tokens},
                               {"eval_seqlen", seqlen},
                               {"memory_gbps", base.memory_gbps},
                               {"kernel_4096", kernel_bench_json(kb)},
                               {"variants", rows}});
        return 0;
    }
    std::printf("SYNTHETIC %s (%d layers), %.0f%% salient 8-bit; threads %d, medians of %d runs, packed kernel %s\n",
                shape_name.c_str(), shape.n_layers, 100 * ratio, at::get_num_threads(), runs,
                kernels::packed_kernel_name());
    std::printf("memory read %.1f GB/s\n", base.memory_gbps);
    print_kernel_bench(kb);
    std::printf("\n");
    std::printf("%-16s | %-40s | %-26s | %s\n", "weights", "batch-1 generation", "perplexity eval", "MB/token");
    for (const Variant& v : variants) {
        const double gbps = v.gen_tokens_per_second * v.bytes_per_token / 1e9;
        std::printf("%-16s | %7.1f tok/s x%5.2f %5.1f%% of mem bw | ", v.name.c_str(), v.gen_tokens_per_second,
                    v.gen_tokens_per_second / f32.gen_tokens_per_second, 100 * gbps / base.memory_gbps);
        if (v.eval_tokens_per_second > 0)
            std::printf("%7.0f tok/s x%5.2f     | ", v.eval_tokens_per_second,
                        v.eval_tokens_per_second / f32.eval_tokens_per_second);
        else
            std::printf("%-26s | ", "(not measured)");
        std::printf("%.1f\n", v.bytes_per_token / 1e6);
    }
    std::printf("\nRandom weights of a real shape: speed only, never quality. x = ratio to float32 in this run.\n");
    return 0;
}

} // namespace pbllm::cli
