// Running quantized Linears from their bits: the runtime layout against QuantizedLinear's own
// dequantization (bit for bit), every kernel against an independent float64 product and the AVX2
// kernel against the scalar reference on awkward shapes and every salient bit-width, errors for
// inconsistent layouts, and stories260K loaded packed against the same file dequantized.
#include "core/calibration.h"
#include "core/decoder.h"
#include "core/error.h"
#include "core/evaluation.h"
#include "core/generation.h"
#include "core/kernels/matvec.h"
#include "core/llama.h"
#include "core/model_io.h"
#include "core/packed_checkpoint.h"
#include "core/packed_runtime.h"
#include "core/synthetic.h"
#include "core/tokenizer.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <QTemporaryDir>
#include <QtTest>

using namespace pbllm;
using namespace pbllm::test;

namespace {

/// Worst error allowed of a packed product, as a fraction of sum_j |w_ij x_j| of its row: float32
/// sums of up to 11008 terms in another order than the float64 product (observed below 1e-6).
constexpr double kProductTolerance = 2e-5;
/// A fast kernel against the scalar reference: both float32, different summation order.
constexpr double kKernelTolerance = 2e-5;
/// Int8 activations (one scale per 128 columns) against the exact product: each x moves by at
/// most half a step of max|x|/127 in its block (observed below 2e-3 on these random rows).
constexpr double kInt8Tolerance = 1e-2;

/// A quantized Linear with chosen contents: about 10% salient entries at random, row 0 with none,
/// row 1 all salient and row 3 only its last column, random codes,
/// signs and FP16-representable parameters.
QuantizedLinear synthetic_linear(std::int64_t rows, std::int64_t cols, int bits, int groupsize = 0,
                                 QuantMethod method = QuantMethod::PbGptq)
{
    QuantizedLinear q;
    q.name = "synthetic";
    q.rows = rows;
    q.cols = cols;
    q.settings.method = method;
    q.settings.salient_bits = bits;
    q.settings.bits = bits;
    q.groupsize = groupsize;
    const bool gptq = method == QuantMethod::Gptq;
    q.salient = gptq ? at::ones({rows, cols}, at::kBool) : at::rand({rows, cols}) < 0.1;
    if (!gptq && rows > 2) {
        q.salient[0].fill_(false);
        q.salient[1].fill_(true);
        if (rows > 3) {
            q.salient[3].fill_(false);
            q.salient[3][cols - 1] = true;
        }
    }
    q.signs = at::rand({rows, cols}) < 0.5;
    const std::int64_t groups = groupsize > 0 ? (cols + groupsize - 1) / groupsize : 1;
    if (bits == 16) {
        q.codes = (at::randn({rows, cols}) * 0.1).to(at::kHalf).view(at::kShort).clone();
    } else {
        const int maxq = (1 << bits) - 1;
        q.codes = at::randint(0, maxq + 1, {rows, cols}, at::kShort);
        const std::int64_t grid_groups = gptq ? groups : 1;
        q.grid.bits = bits;
        q.grid.scale = (at::rand({rows, grid_groups}) * 0.01 + 0.001).to(at::kHalf).to(at::kFloat);
        q.grid.zero = at::randint(0, maxq + 1, {rows, grid_groups}).to(at::kFloat);
    }
    q.codes.masked_fill_(q.salient.logical_not(), 0);
    if (!gptq) {
        q.binary.mu = (at::randn({rows, groups}) * 0.01).to(at::kHalf).to(at::kFloat);
        q.binary.alpha = (at::rand({rows, groups}) * 0.05).to(at::kHalf).to(at::kFloat);
    }
    q.validate();
    q.dequantized = q.dequantize();
    return q;
}

/// max_i |y_i - (W x)_i| / sum_j |W_ij x_j|, W and x widened to float64.
double worst_relative_error(const at::Tensor& W, const at::Tensor& x, const at::Tensor& y)
{
    const at::Tensor Wd = W.to(at::kDouble), xd = x.to(at::kDouble);
    const at::Tensor exact = at::matmul(Wd, xd);
    const at::Tensor scale = at::matmul(Wd.abs(), xd.abs()) + 1e-30;
    return ((y.to(at::kDouble) - exact).abs() / scale).max().item<double>();
}

at::Tensor run_rows(const kernels::PackedWeights& W, const at::Tensor& x, kernels::PackedKernel kernel,
                    kernels::PackedActivations precision = kernels::PackedActivations::Float32)
{
    kernels::PackedInput in;
    in.precision = precision;
    kernels::prepare_packed_input(W, x.data_ptr<float>(), in);
    at::Tensor y = at::empty({W.rows}, at::kFloat);
    kernels::packed_matvec_rows(W, in, y.data_ptr<float>(), 0, W.rows, kernel);
    return y;
}

std::string packed_file()
{
    static const std::string path = [] {
        static QTemporaryDir dir;
        const Tokenizer tok = Tokenizer::from_file(tok512_path());
        QuantizedModel m = quantize_model(
            stories260k(), sample_calibration_windows(tok.encode(read_text_file(tinystories_train_path())), 16, 128, 0),
            QuantPlan{});
        m.tokenizer_bytes = tok.model_bytes();
        const std::string p = dir.filePath("stories260K-pb.pbllm.h5").toStdString();
        write_packed_checkpoint(m, p);
        return p;
    }();
    return path;
}

Model load(bool packed)
{
    LoadOptions o;
    o.packed = packed;
    o.tokenizer_path = tok512_path();
    return load_model(packed_file(), o);
}

} // namespace

class TestPackedInference : public QObject {
    Q_OBJECT

private Q_SLOTS:
    void kernelsMatchDequantizedProduct_data()
    {
        QTest::addColumn<int>("rows");
        QTest::addColumn<int>("cols");
        QTest::addColumn<int>("bits");
        QTest::addColumn<int>("groupsize");
        QTest::addColumn<int>("method");
        for (int bits : {2, 3, 4, 5, 6, 7, 8, 16}) {
            const std::string b = std::to_string(bits) + "-bit";
            QTest::newRow(("64 cols, 9 rows, " + b).c_str()) << 9 << 64 << bits << 0 << 0;
            QTest::newRow(("172 cols, 7 rows, " + b).c_str()) << 7 << 172 << bits << 0 << 0;
        }
        QTest::newRow("11008 cols, 5 rows, 8-bit") << 5 << 11008 << 8 << 0 << 0;
        QTest::newRow("11008 cols, 3 rows, 16-bit") << 3 << 11008 << 16 << 0 << 0;
        QTest::newRow("4096 cols, 33 rows, 8-bit") << 33 << 4096 << 8 << 0 << 0;
        QTest::newRow("384 cols, 11 rows, groups of 128") << 11 << 384 << 8 << 128 << 0;
        QTest::newRow("1280 cols, 6 rows, groups of 256") << 6 << 1280 << 4 << 256 << 0;
        QTest::newRow("plain gptq 4-bit, groups of 128") << 5 << 256 << 4 << 128 << 2;
        QTest::newRow("plain gptq 3-bit, 172 cols") << 5 << 172 << 3 << 0 << 2;
    }

    void kernelsMatchDequantizedProduct()
    {
        QFETCH(int, rows);
        QFETCH(int, cols);
        QFETCH(int, bits);
        QFETCH(int, groupsize);
        QFETCH(int, method);
        const QuantizedLinear q = synthetic_linear(rows, cols, bits, groupsize, static_cast<QuantMethod>(method));
        const PackedLinear p = pack_linear(q);
        const PackedWeightsPtr W = build_packed_weights(p, "synthetic");
        QCOMPARE(W->salient_count(), p.salient_count);

        // The layout holds exactly the quantizer's weights.
        at::Tensor unpacked = at::empty({rows, cols}, at::kFloat);
        kernels::packed_dequantize_rows(*W, unpacked.data_ptr<float>(), 0, rows);
        QVERIFY(at::equal(unpacked, q.dequantized));

        const at::Tensor x = at::randn({cols});
        const auto reference_kernel = kernels::PackedKernel::Reference;
        const auto int8 = kernels::PackedActivations::Int8;
        const at::Tensor reference = run_rows(*W, x, reference_kernel), reference8 = run_rows(*W, x, reference_kernel, int8);
        const double reference_error = worst_relative_error(q.dequantized, x, reference);
        QVERIFY2(reference_error < kProductTolerance, qPrintable(QString::number(reference_error)));
        // Every fast kernel this CPU has against the reference, float32 and int8 activations (the
        // int8 ones also near the exact product).
        const at::Tensor row_scale = at::matmul(q.dequantized.abs(), x.abs()).to(at::kDouble) + 1e-30;
        for (kernels::PackedKernel k : kernels::available_packed_kernels()) {
            const QString name = kernels::packed_kernel_name(k);
            const double kernel = ((run_rows(*W, x, k) - reference).abs().to(at::kDouble) / row_scale).max().item<double>();
            QVERIFY2(kernel < kKernelTolerance, qPrintable(name + ": " + QString::number(kernel)));
            const at::Tensor fast8 = run_rows(*W, x, k, int8);
            const double kernel8 = ((fast8 - reference8).abs().to(at::kDouble) / row_scale).max().item<double>();
            QVERIFY2(kernel8 < kKernelTolerance, qPrintable(name + " int8: " + QString::number(kernel8)));
            const double int8_error = worst_relative_error(q.dequantized, x, fast8);
            QVERIFY2(int8_error < kInt8Tolerance, qPrintable(name + " int8: " + QString::number(int8_error)));
        }
        const at::Tensor fast = run_rows(*W, x, kernels::preferred_packed_kernel());

        // Threaded matvec (rows split by work) and both batched forms: per-token and tiled.
        const int threads = at::get_num_threads();
        at::set_num_threads(2);
        kernels::PackedInput scratch;
        at::Tensor y = at::empty({rows}, at::kFloat);
        packed_matvec(*W, x.data_ptr<float>(), y.data_ptr<float>(), scratch);
        at::set_num_threads(threads);
        QVERIFY(at::equal(y, fast));
        for (int tokens : {3, 40}) {
            const at::Tensor X = at::randn({2, tokens, cols});
            const at::Tensor Y = packed_linear_forward(*W, X);
            QCOMPARE(Y.sizes(), (at::IntArrayRef{2, tokens, rows}));
            const at::Tensor exact = at::matmul(X.to(at::kDouble), q.dequantized.to(at::kDouble).t());
            const at::Tensor scale = at::matmul(X.abs().to(at::kDouble), q.dequantized.abs().to(at::kDouble).t());
            const double worst = ((Y.to(at::kDouble) - exact).abs() / (scale + 1e-30)).max().item<double>();
            QVERIFY2(worst < kProductTolerance, qPrintable(QString::number(worst)));
        }
    }

    void int8ActivationsMatchTheirDefinition()
    {
        // The vectorised rounding of prepare_packed_input equals the scalar definition bit for bit
        // (including ties and zero blocks).
        const QuantizedLinear q = synthetic_linear(3, 1000, 8);
        const PackedWeightsPtr W = build_packed_weights(pack_linear(q), "q");
        at::Tensor x = at::randn({1000}) * 3;
        x.narrow(0, 128, 128).zero_();
        x[5] = 127.0f, x[6] = 0.5f, x[7] = -1.5f; // block 0's scale is exactly 1: ties round to even
        kernels::PackedInput in;
        in.precision = kernels::PackedActivations::Int8;
        kernels::prepare_packed_input(*W, x.data_ptr<float>(), in);
        std::vector<std::int8_t> expected(in.x_int8.size());
        std::vector<float> scale(in.block_scale.size());
        kernels::quantize_blocks_int8_reference(in.x.data(), W->blocks, expected.data(), scale.data());
        QVERIFY(in.x_int8 == expected);
        QVERIFY(in.block_scale == scale);
        QCOMPARE(static_cast<int>(in.x_int8[6]), 0);
        QCOMPARE(static_cast<int>(in.x_int8[7]), -2);
        QCOMPARE(in.block_scale[1], 0.0f);

        // The salient entries' int16 copy: the same against its definition, zeros past the end.
        std::vector<std::int16_t> expected16(in.x_int16.size(), 0);
        const float scale16 = kernels::quantize_int16_reference(in.x.data(), W->padded_cols(), expected16.data());
        QVERIFY(in.x_int16 == expected16);
        QCOMPARE(in.int16_scale, scale16);
        QCOMPARE(in.x_int16.size(), static_cast<std::size_t>(W->padded_cols() + kernels::kInt16Padding));
        const float largest = x.abs().max().item<float>();
        QCOMPARE(in.int16_scale, largest / 32767.0f);
        QCOMPARE(static_cast<int>(in.x_int16[5]), static_cast<int>(std::nearbyint(127.0f * 32767.0f / largest)));
    }

    void int16SalientSumsStayExactAtTheirLargest()
    {
        // Every weight salient at the largest code, every x at the largest int16: the integer sums
        // of the int8-activation kernels reach 11008 x 255 x 32767 (past 2^31) and must not wrap.
        QuantizedLinear q = synthetic_linear(3, 11008, 8, 0, QuantMethod::Gptq);
        q.codes.fill_(255);
        q.grid.zero.fill_(0);
        q.validate();
        q.dequantized = q.dequantize();
        const PackedWeightsPtr W = build_packed_weights(pack_linear(q), "largest");
        const at::Tensor x = at::rand({11008}) * 0.5 + 1.0; // all positive: nothing cancels
        const at::Tensor exact = at::matmul(q.dequantized.to(at::kDouble), x.to(at::kDouble));
        for (kernels::PackedKernel k : kernels::available_packed_kernels()) {
            const at::Tensor y = run_rows(*W, x, k, kernels::PackedActivations::Int8).to(at::kDouble);
            const double worst = ((y - exact).abs() / exact.abs()).max().item<double>();
            // A wrapped int32 lane would be off by 2^32 int16 units, about 5% of a row here; float32
            // sums of 11008 terms of one sign drift by well under 1e-4.
            QVERIFY2(worst < 1e-4, qPrintable(QString(kernels::packed_kernel_name(k)) + ": " + QString::number(worst)));
        }
    }

    void int8HeadKernelsAgree()
    {
        // Rows of int8 with a scale each: AVX2 against the reference and against float64 of the
        // rounded matrix itself; rounding keeps every weight within half a step of the original.
        for (std::int64_t cols : {64, 172, 4096 + 13}) {
            const at::Tensor W = at::randn({37, cols});
            const kernels::Int8Rows q = kernels::quantize_rows_int8(W.data_ptr<float>(), 37, cols);
            at::Tensor rounded = at::empty({37, cols}, at::kDouble);
            for (std::int64_t r = 0; r < 37; ++r)
                for (std::int64_t c = 0; c < cols; ++c)
                    rounded[r][c] = static_cast<double>(q.q[static_cast<std::size_t>(r * cols + c)]) * q.scale[static_cast<std::size_t>(r)];
            const double step = (W.abs().amax(1) / 127).max().item<double>();
            QVERIFY((rounded - W.to(at::kDouble)).abs().max().item<double>() <= step / 2 * (1 + 1e-6));
            const at::Tensor x = at::randn({cols});
            at::Tensor fast = at::empty({37}), reference = at::empty({37});
            kernels::matvec_int8_rows(q, x.data_ptr<float>(), fast.data_ptr<float>(), 0, 37);
            kernels::matvec_int8_rows_reference(q, x.data_ptr<float>(), reference.data_ptr<float>(), 0, 37);
            const double err = worst_relative_error(rounded.to(at::kFloat), x, fast);
            QVERIFY2(err < kProductTolerance, qPrintable(QString::number(err)));
            // Every fast kernel this CPU has, whichever matvec_int8_rows picks.
            for (const kernels::MatvecKernels& k : kernels::available_matvec_kernels()) {
                k.int8(q.q.data(), q.scale.data(), x.data_ptr<float>(), fast.data_ptr<float>(), cols, 0, 37);
                const double each = worst_relative_error(rounded.to(at::kFloat), x, fast);
                QVERIFY2(each < kProductTolerance, qPrintable(QString(k.name) + " " + QString::number(each)));
            }
            const double kernel = worst_relative_error(rounded.to(at::kFloat), x, reference);
            QVERIFY2(kernel < kProductTolerance, qPrintable(QString::number(kernel)));
        }
    }

    void int8HeadDecoderStaysClose()
    {
        const Model packed = load(true);
        DecoderOptions options;
        options.int8_head = true;
        auto plain = make_decoder(packed, DecoderBackend::Cpu, 8), int8 = make_decoder(packed, DecoderBackend::Cpu, 8, options);
        for (int token : {1, 300, 42}) {
            const at::Tensor a = at::from_blob(const_cast<float*>(plain->step(token)), {512}).clone();
            const at::Tensor b = at::from_blob(const_cast<float*>(int8->step(token)), {512}).clone();
            // Half an int8 step per weight, |x| summed over 64 columns: well under 1% of the range.
            QVERIFY2(max_abs_diff(a, b) < 0.01 * (a.max() - a.min()).item<double>(), qPrintable(QString::number(max_abs_diff(a, b))));
        }
    }

    void quantizerOutputRunsPacked()
    {
        // A Linear from the real quantizer (PB-GPTQ 10%, 8-bit) rather than random fields.
        const at::Tensor X = at::randn({512, 256});
        GptqOptions o;
        o.blocksize = 64;
        LayerQuantSettings s;
        const QuantizedLinear q = quantize_linear("model.layers.0.mlp.up_proj", at::randn({48, 256}) * 0.05,
                                                  (at::matmul(X.t(), X) * (2.0 / 512)).to(at::kDouble), s, o);
        const PackedWeightsPtr W = build_packed_weights(pack_linear(q), "q");
        const at::Tensor x = at::randn({256});
        const double err = worst_relative_error(q.dequantized, x, run_rows(*W, x, kernels::preferred_packed_kernel()));
        QVERIFY2(err < kProductTolerance, qPrintable(QString::number(err)));
    }

    void groupsOfGroupsizeColumnsWhenTheyDoNotDivideTheRow()
    {
        // 172 columns in groups of 128: the quantizer fits a group of 128 and one of 44, and the
        // dequantizer and the packed layout place them so (not two groups of 86).
        for (QuantMethod method : {QuantMethod::PbGptq, QuantMethod::Gptq}) {
            const at::Tensor X = at::randn({256, 172});
            GptqOptions o;
            o.blocksize = 64;
            o.groupsize = 128;
            LayerQuantSettings s;
            s.method = method;
            const QuantizedLinear q = quantize_linear("model.layers.0.mlp.down_proj", at::randn({24, 172}) * 0.05,
                                                      (at::matmul(X.t(), X) * (2.0 / 256)).to(at::kDouble), s, o);
            QVERIFY(at::equal(q.dequantize(), q.dequantized));
            const PackedLinear p = pack_linear(q);
            QVERIFY(at::equal(unpack_linear(p, "q").dequantized, q.dequantized));
            const PackedWeightsPtr W = build_packed_weights(p, "q");
            QCOMPARE(W->groups, std::int64_t(2));
            at::Tensor unpacked = at::empty({24, 172}, at::kFloat);
            kernels::packed_dequantize_rows(*W, unpacked.data_ptr<float>(), 0, 24);
            QVERIFY(at::equal(unpacked, q.dequantized));
            const at::Tensor x = at::randn({172});
            const double err = worst_relative_error(q.dequantized, x, run_rows(*W, x, kernels::preferred_packed_kernel()));
            QVERIFY2(err < kProductTolerance, qPrintable(QString::number(err)));
        }
    }

    void residentBitsAtTenPercent()
    {
        // 4096-wide rows at 10% salient 8-bit: 1 sign bit + 16 bits per salient weight (in-block
        // column and code) + a u8 count per 128-column block + row parameters: about 2.68 bits.
        const QuantizedLinear q = synthetic_linear(64, 4096, 8);
        const PackedWeightsPtr W = build_packed_weights(pack_linear(q), "q");
        QCOMPARE(static_cast<std::int64_t>(W->offsets.size()), W->salient_count() + kernels::kPackedEntryPadding);
        const double r = static_cast<double>(W->salient_count()) / (64.0 * 4096);
        // Per row: mu, alpha, scale (FP16), zero (u8) and a u32 entry start (one more in all, and
        // the padding entries).
        const double expected =
            1.0 + 16.0 * r + 8.0 / 128 + (3 * 2 + 1 + 4) * 8.0 / 4096 + (32.0 + 16.0 * kernels::kPackedEntryPadding) / (64 * 4096);
        QVERIFY2(std::abs(resident_bits_per_weight(*W) - expected) < 1e-9,
                 qPrintable(QString::number(resident_bits_per_weight(*W))));
    }

    void inconsistentLayoutsAreRefused_data()
    {
        QTest::addColumn<QString>("field");
        QTest::addColumn<QString>("message");
        QTest::newRow("negative alpha") << "alpha" << "negative or non-finite alpha";
        QTest::newRow("zero scale") << "scale" << "not positive and finite";
        QTest::newRow("zero point above the grid") << "zero" << "zero point above 15";
        QTest::newRow("short signs") << "signs" << "signs hold";
        QTest::newRow("groups not whole blocks") << "groups" << "not whole 128-column blocks";
    }

    void inconsistentLayoutsAreRefused()
    {
        QFETCH(QString, field);
        QFETCH(QString, message);
        // (A code above the grid cannot be stored: codes are grid_bits wide.)
        PackedLinear p = pack_linear(synthetic_linear(4, 256, 4, field == "groups" ? 64 : 0));
        if (field == "alpha")
            p.alpha[1] = 0xbc00; // -1.0
        if (field == "scale")
            p.grid_scale[2] = 0;
        if (field == "zero")
            p.grid_zero[3] = 16;
        if (field == "signs")
            p.signs.pop_back();
        try {
            (void)build_packed_weights(p, "m.pbllm.h5: Linear 'x'");
            QFAIL("accepted");
        } catch (const Error& e) {
            QVERIFY2(QString(e.what()).contains("m.pbllm.h5: Linear 'x'"), e.what());
            QVERIFY2(QString(e.what()).contains(message), e.what());
        }
    }

    void stories260kPackedMatchesDequantized()
    {
        const Model dense = load(false);
        const Model packed = load(true);
        QVERIFY(packed.has_packed_linears());
        QVERIFY(!dense.has_packed_linears());
        // No float32 copy of a quantized Linear is kept: only FP16 tensors besides the packed ones.
        QCOMPARE(packed.named_tensors().size(), std::size_t(1 + 5 * 2 + 1)); // embedding, norms, final norm (tied head)
        for (const NamedTensor& t : packed.named_tensors())
            QCOMPARE(static_cast<int>(t.tensor.scalar_type()), static_cast<int>(at::kHalf));

        // Batched forward (tiled from 16 tokens) against the dequantized model.
        const Tokenizer tok = tokenizer_for(packed);
        const std::vector<int> val = tok.encode(read_text_file(tinystories_val_path()));
        std::vector<std::int64_t> ids(val.begin(), val.begin() + 2 * 256);
        const at::Tensor tokens = at::tensor(ids).view({2, 256});
        const at::Tensor a = forward(dense, tokens), b = forward(packed, tokens);
        QVERIFY2(max_abs_diff(a, b) < 2e-3, qPrintable(QString::number(max_abs_diff(a, b))));

        // Perplexity on 24 windows: the same to 1e-4 (relative).
        PerplexitySettings ps;
        ps.max_windows = 24;
        const double pd = evaluate_perplexity(dense, val, ps).ppl, pp = evaluate_perplexity(packed, val, ps).ppl;
        QVERIFY2(std::abs(pp / pd - 1.0) < 1e-4, qPrintable(QString("%1 vs %2").arg(pp).arg(pd)));

        // Greedy generation through the CPU decoder: the same 60 tokens.
        GenerationSettings gs;
        gs.max_new_tokens = 60;
        gs.stop_at_eos = false;
        gs.sampler.temperature = 0.0f;
        const GenerationResult gd = generate(dense, tok, "Once upon a time", gs);
        const GenerationResult gp = generate(packed, tok, "Once upon a time", gs);
        QCOMPARE(gp.tokens.size(), std::size_t(60));
        QVERIFY(gp.tokens == gd.tokens);
        QCOMPARE(gp.text, gd.text);
    }

    void quantizedHeadFileReadsInBothModes()
    {
        // --quantize-head stores lm_head under /linear: read dequantized in both modes (only
        // decoder-layer Linears run packed), the packed model's logits those of the dequantized one.
        Model m = make_synthetic_model([] {
            ModelConfig c = stories260k().config;
            c.n_layers = 2;
            c.tied_embeddings = false;
            return c;
        }());
        QuantPlan plan;
        plan.config.quantize_head = true;
        QuantizedModel q = quantize_model(m, {{1, 5, 9, 300, 2, 7, 7, 100}}, plan);
        q.tokenizer_bytes = Tokenizer::from_file(tok512_path()).model_bytes();
        QTemporaryDir dir;
        const std::string path = dir.filePath("head.pbllm.h5").toStdString();
        write_packed_checkpoint(q, path);
        const PackedCheckpoint dense = read_packed_checkpoint(path);
        QCOMPARE(dense.packed.size(), std::size_t(2 * 7 + 1));
        QCOMPARE(dense.packed.back().name, std::string("lm_head"));
        const PackedCheckpoint packed = read_packed_checkpoint(path, PackedLoad::Runtime);
        QCOMPARE(packed.bits.size(), std::size_t(2 * 7 + 1));
        QVERIFY(packed.quantized.model.has_packed_linears());
        QVERIFY(at::equal(packed.quantized.model.output, dense.quantized.model.output));
        const at::Tensor tokens = at::tensor(std::vector<std::int64_t>{1, 20, 33, 4}).view({1, 4});
        const double diff = max_abs_diff(forward(dense.quantized.model, tokens), forward(packed.quantized.model, tokens));
        QVERIFY2(diff < 1e-4, qPrintable(QString::number(diff)));
    }

    void packedModelRefusesTheTorchDecoder()
    {
        const Model packed = load(true);
        QVERIFY_THROWS_EXCEPTION(Error, make_decoder(packed, DecoderBackend::Torch));
    }
};

QTEST_GUILESS_MAIN(TestPackedInference)
#include "tst_packed_inference.moc"
