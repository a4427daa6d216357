// The matvec kernels against their reference and an independent float64 product, the NaN/Inf
// scan, streamed tensor statistics, and synthetic models written for benchmarks.
#include "core/cpu_allocator.h"
#include "core/error.h"
#include "core/hf_model.h"
#include "core/kernels/matvec.h"
#include "core/model_io.h"
#include "core/synthetic.h"
#include "core/system.h"
#include "core/tensor_stats.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <c10/core/CPUAllocator.h>
#include <QDir>
#include <QFile>
#include <QJsonDocument>
#include <QJsonObject>
#include <QTemporaryDir>
#include <QtTest>
#include <QThread>
#include <QElapsedTimer>

using namespace pbllm;
using namespace pbllm::test;

namespace {

kernels::WeightFormat format_of(at::ScalarType type)
{
    return type == at::kHalf ? kernels::WeightFormat::F16
           : type == at::kBFloat16 ? kernels::WeightFormat::BF16
                                   : kernels::WeightFormat::F32;
}

/// W x by every fast kernel this CPU can run, by name.
std::vector<std::pair<QString, at::Tensor>> fast_matvecs(at::ScalarType type, const at::Tensor& W, const at::Tensor& x)
{
    std::vector<std::pair<QString, at::Tensor>> out;
    const std::int64_t rows = W.size(0), cols = W.size(1);
    const auto* u16 = static_cast<const std::uint16_t*>(W.data_ptr());
    for (const kernels::MatvecKernels& k : kernels::available_matvec_kernels()) {
        at::Tensor y = at::zeros({rows});
        if (type == at::kFloat)
            k.f32(W.data_ptr<float>(), x.data_ptr<float>(), y.data_ptr<float>(), cols, 0, rows);
        else
            (type == at::kHalf ? k.f16 : k.bf16)(u16, x.data_ptr<float>(), y.data_ptr<float>(), cols, 0, rows);
        out.emplace_back(k.name, y);
    }
    return out;
}

} // namespace

class TestKernels : public QObject {
    Q_OBJECT

private Q_SLOTS:
    void matvecMatchesFloat64Product_data()
    {
        QTest::addColumn<int>("dtype");
        QTest::addColumn<int>("cols");
        for (const auto& [name, type] : {std::pair{"f32", at::kFloat}, {"f16", at::kHalf}, {"bf16", at::kBFloat16}})
            for (int cols : {1, 7, 8, 31, 32, 33, 100, 2048 + 13})
                QTest::newRow((std::string(name) + " x " + std::to_string(cols)).c_str()) << static_cast<int>(type) << cols;
    }

    void matvecMatchesFloat64Product()
    {
        QFETCH(int, dtype);
        QFETCH(int, cols);
        const auto type = static_cast<at::ScalarType>(dtype);
        const int rows = 37;
        const at::Tensor W = at::randn({rows, cols}).to(type).contiguous();
        const at::Tensor x = at::randn({cols});
        // Independent: the stored values widened to float64, multiplied by ATen.
        const at::Tensor expected = at::matmul(W.to(at::kDouble), x.to(at::kDouble));
        at::Tensor fast = at::zeros({rows}), ref = at::zeros({rows});
        kernels::matvec_rows(format_of(type), W.data_ptr(), x.data_ptr<float>(), fast.data_ptr<float>(), cols, 0, rows);
        kernels::matvec_rows_reference(format_of(type), W.data_ptr(), x.data_ptr<float>(), ref.data_ptr<float>(), cols,
                                       0, rows);
        // float32 accumulation of cols products: error grows like sqrt(cols) * eps * |w||x|.
        const double tolerance = 1e-5 * std::sqrt(static_cast<double>(cols)) * (1.0 + std::sqrt(cols));
        QVERIFY2(max_abs_diff(fast, expected) < tolerance, qPrintable(QString::number(max_abs_diff(fast, expected))));
        QVERIFY2(max_abs_diff(ref, expected) < tolerance, qPrintable(QString::number(max_abs_diff(ref, expected))));
        // Each x86 implementation this CPU has, not only the one matvec_rows picks.
        for (const auto& [name, y] : fast_matvecs(type, W, x)) {
            QVERIFY2(max_abs_diff(y, expected) < tolerance, qPrintable(name + ": " + QString::number(max_abs_diff(y, expected))));
        }
        // Rows outside [begin, end) are left alone.
        at::Tensor part = at::full({rows}, 7.0f);
        kernels::matvec_rows(format_of(type), W.data_ptr(), x.data_ptr<float>(), part.data_ptr<float>(), cols, 3, 5);
        QCOMPARE(part[2].item<float>(), 7.0f);
        QCOMPARE(part[5].item<float>(), 7.0f);
        QCOMPARE(part[4].item<float>(), fast[4].item<float>());
    }

    void toFloatIsExact_data()
    {
        QTest::addColumn<int>("dtype");
        QTest::newRow("f16") << static_cast<int>(at::kHalf);
        QTest::newRow("bf16") << static_cast<int>(at::kBFloat16);
    }

    void toFloatIsExact()
    {
        QFETCH(int, dtype);
        const auto type = static_cast<at::ScalarType>(dtype);
        // Normal, subnormal, zero, negative zero and infinite values.
        const at::Tensor v = at::cat({at::randn({1000}) * 100, at::tensor({0.0f, -0.0f, 1e-7f, -3e-6f, 65504.0f}),
                                      at::tensor({INFINITY, -INFINITY})})
                                 .to(type);
        at::Tensor out = at::empty({v.numel()});
        kernels::to_float(format_of(type), v.data_ptr(), out.data_ptr<float>(), v.numel());
        QVERIFY(at::equal(out, v.to(at::kFloat)));
    }

    void findNonfiniteCountsAndLocates_data()
    {
        QTest::addColumn<int>("dtype");
        QTest::newRow("f32") << static_cast<int>(at::kFloat);
        QTest::newRow("f16") << static_cast<int>(at::kHalf);
        QTest::newRow("bf16") << static_cast<int>(at::kBFloat16);
        QTest::newRow("f64 (through ATen)") << static_cast<int>(at::kDouble);
    }

    void findNonfiniteCountsAndLocates()
    {
        QFETCH(int, dtype);
        const auto type = static_cast<at::ScalarType>(dtype);
        at::Tensor t = at::randn({3, 1 << 20}).to(type); // three scan chunks
        QCOMPARE(find_nonfinite(t).count, 0);
        QCOMPARE(find_nonfinite(t).first, -1);
        t.view({-1})[(1 << 20) + 5] = NAN;
        t.view({-1})[(2 << 20) + 9] = INFINITY;
        t.view({-1})[(2 << 20) + 10] = -INFINITY;
        const NonFinite bad = find_nonfinite(t);
        QCOMPARE(bad.count, 3);
        QCOMPARE(bad.first, (1 << 20) + 5);
    }

    void streamedStatisticsMatchTheDefinition()
    {
        // Over three chunks, with a non-zero mean and heavy tails.
        const at::Tensor t = (at::randn({3 << 20}).pow(3) + 0.5).to(at::kBFloat16);
        const TensorStats s = tensor_stats(t);
        const at::Tensor x = t.to(at::kDouble);
        const double mean = x.mean().item<double>();
        const at::Tensor c = x - mean;
        const double var = c.pow(2).mean().item<double>();
        QCOMPARE(s.count, t.numel());
        QVERIFY(std::abs(s.mean - mean) < 1e-9);
        QVERIFY(std::abs(s.std - std::sqrt(var)) < 1e-9);
        QCOMPARE(s.abs_max, x.abs().max().item<double>());
        QVERIFY(std::abs(s.kurtosis - (c.pow(4).mean().item<double>() / (var * var) - 3.0)) < 1e-6);
        QCOMPARE(s.outlier_fraction, (c.abs() > 3.0 * std::sqrt(var)).to(at::kDouble).mean().item<double>());
    }

    void hugePageAllocatorServesLibtorch()
    {
        // Results and frees are those of libtorch's allocator; blocks from 32 MiB up are mapped on
        // their own (and advised to use huge pages) and unmapped when the tensor goes.
        const at::Tensor a = at::randn({3000, 2900}), b = at::randn({2900, 3100});
        const at::Tensor before = at::matmul(a, b);
        install_huge_page_allocator();
        if (!huge_page_allocator_installed())
            QSKIP("sanitizer builds keep the allocator that lets ASan check every block");
        const std::size_t mapped = huge_page_allocator_mapped_bytes();
        {
            const at::Tensor a2 = a.clone(), b2 = b.clone(); // 34.8 MB, 36.0 MB
            const at::Tensor after = at::matmul(a2, b2);     // 37.2 MB
            QVERIFY(huge_page_allocator_mapped_bytes() >= mapped + after.nbytes() + a2.nbytes() + b2.nbytes());
            QVERIFY(at::equal(after, before));
            const at::Tensor small = at::arange(1000, at::kFloat); // 4 KB: from malloc
            QCOMPARE(small.sum().item<double>(), 499500.0);
            QVERIFY(huge_page_allocator_mapped_bytes() >= mapped + after.nbytes());
        }
        QCOMPARE(huge_page_allocator_mapped_bytes(), mapped);
        c10::Allocator* cpu = c10::GetCPUAllocator();
        for (std::size_t bytes : {std::size_t(1), std::size_t(100) << 10, kHugePageBlockBytes, std::size_t(40) << 20}) {
            auto* p = static_cast<unsigned char*>(cpu->raw_allocate(bytes));
            QVERIFY(reinterpret_cast<std::uintptr_t>(p) % 64 == 0);
            p[0] = 1;
            p[bytes - 1] = 2;
            cpu->raw_deallocate(p);
        }
        QCOMPARE(huge_page_allocator_mapped_bytes(), mapped);
    }

    void anonymousPeakSamplerSeesAnAllocationItDidNotWitness()
    {
        // 256 MiB touched and freed between two take_period_peak() calls: only the sampler's own
        // thread can have seen it. Waits for it as long as a busy machine needs.
        AnonymousPeakSampler sampler(5);
        const std::int64_t base = sampler.take_period_peak();
        if (base < 0)
            QSKIP("no RssAnon in /proc/self/status");
        const std::int64_t bytes = std::int64_t(256) << 20;
        {
            const at::Tensor big = at::ones({bytes / 4}, at::kFloat); // every page written
            QElapsedTimer waited;
            waited.start();
            while (sampler.peak() < base + bytes * 9 / 10 && waited.elapsed() < 120000)
                QThread::msleep(5);
            QVERIFY2(sampler.peak() >= base + bytes * 9 / 10,
                     qPrintable(QString("peak %1, base %2").arg(sampler.peak()).arg(base)));
        }
        const std::int64_t period = sampler.take_period_peak();
        QVERIFY(period >= base + bytes * 9 / 10);
        // The block went back to the system (sanitizer builds keep freed blocks for reuse): the
        // next period starts low again.
        if (huge_page_allocator_installed())
            QVERIFY2(sampler.take_period_peak() < base + bytes / 2, qPrintable(QString::number(current_anonymous_bytes())));
        QVERIFY(sampler.peak() >= period);
    }

    void synthesizedModelLoadsLabelled()
    {
        QTemporaryDir tmp;
        SyntheticHfSpec spec;
        spec.config = stories15m_shape();
        spec.config.n_layers = 2;
        spec.config.vocab_size = 512;
        spec.shape_name = "stories15m";
        spec.dtype = at::kBFloat16;
        spec.seed = 5;
        spec.tokenizer_path = tok512_path();
        const std::string dir = tmp.filePath("synth").toStdString();
        double last = 0.0;
        write_synthetic_hf(spec, dir, [&](double f, std::string_view) {
            last = f;
            return true;
        });
        QCOMPARE(last, 1.0);
        LoadOptions options;
        options.storage = WeightStorage::Mapped;
        const Model m = load_model(dir, options);
        QCOMPARE(m.config.dim, 288);
        QCOMPARE(m.config.n_layers, 2);
        QCOMPARE(m.file_dtype, std::string("bf16"));
        QVERIFY2(QString::fromStdString(m.synthetic).contains("benchmarks only"), m.synthetic.c_str());
        QVERIFY(QString::fromStdString(m.synthetic).contains("stories15m"));
        QCOMPARE(m.tokenizer_path, dir + "/tokenizer.model");
        const TensorStats s = tensor_stats(m.layers[1].weight(LinearKind::Down));
        QVERIFY2(std::abs(s.std - 0.02) < 0.001, qPrintable(QString::number(s.std)));
        QCOMPARE(tensor_stats(m.final_norm).mean, 1.0);
        // The same seed writes the same bytes; another folder is needed (refuses a non-empty one).
        try {
            write_synthetic_hf(spec, dir);
            QFAIL("wrote into a non-empty folder");
        } catch (const Error& e) {
            QVERIFY2(QString(e.what()).contains("not empty"), e.what());
        }
        const std::string again = tmp.filePath("again").toStdString();
        write_synthetic_hf(spec, again);
        QCOMPARE(read_bytes(QString::fromStdString(again + "/model.safetensors")),
                 read_bytes(QString::fromStdString(dir + "/model.safetensors")));
        // A cancelled write leaves no model file behind.
        const std::string cancelled = tmp.filePath("cancelled").toStdString();
        QVERIFY_THROWS_EXCEPTION(Cancelled, write_synthetic_hf(spec, cancelled, [](double f, std::string_view) {
                                     return f < 0.5;
                                 }));
        QVERIFY(QDir(QString::fromStdString(cancelled)).entryList(QDir::Files).isEmpty());
    }

    void unknownShapeIsNamed()
    {
        try {
            synthetic_shape("llama-9000b");
            QFAIL("accepted an unknown shape");
        } catch (const Error& e) {
            QVERIFY2(QString(e.what()).contains("llama-9000b") && QString(e.what()).contains("tinyllama-1.1b"), e.what());
        }
        QCOMPARE(synthetic_shape("llama-7b").parameter_count(), std::int64_t{6738415616});
        QCOMPARE(synthetic_shape("tinyllama-1.1b").parameter_count(), std::int64_t{1100048384});
        // Qwen3's model cards: 0.6B (0.44B without embeddings), 8.2B (6.95B without embeddings).
        QCOMPARE(synthetic_shape("qwen3-0.6b").parameter_count(), std::int64_t{596049920});
        QCOMPARE(synthetic_shape("qwen3-8b").parameter_count(), std::int64_t{8190735360});
        QCOMPARE(synthetic_shape("qwen3-8b").head_dim(), 128);
        QCOMPARE(synthetic_shape("qwen3-0.6b").q_dim(), 2048); // wider than the 1024-wide stream
    }
};

QTEST_GUILESS_MAIN(TestKernels)
#include "tst_kernels.moc"
