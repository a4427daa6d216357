// The pbllm command line as scripts use it: JSON contracts, exit codes, one-line errors, the
// Hugging Face conversion round trip, and the default-model lookup and verified download.
#include "core/error.h"
#include "core/hf_model.h"
#include "core/model_io.h"
#include "core/synthetic.h"
#include "core/tokenizer.h"
#include "tests/support/test_support.h"

#include <ATen/ATen.h>
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QProcess>
#include <QTemporaryDir>
#include <QtTest>

using namespace pbllm;
using namespace pbllm::test;

namespace {

struct Run {
    int code = -1;
    QByteArray out, err;
    QJsonObject json() const { return QJsonDocument::fromJson(out).object(); }
};

Run pbllm_run(const QStringList& args, const QProcessEnvironment& env = QProcessEnvironment::systemEnvironment())
{
    QProcess p;
    p.setProcessEnvironment(env);
    p.start(QString::fromStdString(pbllm_executable()), args);
    p.waitForFinished(kPatientMs);
    return {p.exitStatus() == QProcess::NormalExit ? p.exitCode() : -1, p.readAllStandardOutput(),
            p.readAllStandardError()};
}

QString model() { return QString::fromStdString(stories260k_path()); }
QString val() { return QString::fromStdString(tinystories_val_path()); }

} // namespace

class TestCli : public QObject {
    Q_OBJECT

private Q_SLOTS:
    void helpAndUsageErrors()
    {
        QCOMPARE(pbllm_run({"--help"}).code, 0);
        QCOMPARE(pbllm_run({}).code, 2);
        const Run unknown = pbllm_run({"frobnicate"});
        QCOMPARE(unknown.code, 2);
        QVERIFY(unknown.err.contains("unknown command 'frobnicate'"));
        QCOMPARE(pbllm_run({"eval", model()}).code, 2); // --text is required
        const Run threads = pbllm_run({"info", model(), "--threads", "many"});
        QCOMPARE(threads.code, 2);
        QVERIFY(threads.err.contains("--threads must be an integer"));
        QCOMPARE(pbllm_run({"generate", model(), "--temperature", "-1"}).code, 2);
    }

    void infoJson()
    {
        const Run r = pbllm_run({"info", model(), "--json"});
        QCOMPARE(r.code, 0);
        const QJsonObject o = r.json();
        QCOMPARE(o["parameters"].toInteger(), 260032);
        QCOMPARE(o["config"].toObject()["n_kv_heads"].toInt(), 4);
        QCOMPARE(o["tokenizer_vocab"].toInt(), 512);
        QCOMPARE(o["tensors"].toArray().size(), 1 + 5 * 9 + 1); // embedding, 5 blocks, final norm; head tied
        QCOMPARE(o["file_bytes"].toInteger(), 1056540);
    }

    void synthInfoEvalGenerate()
    {
        QTemporaryDir tmp;
        const QString dir = tmp.filePath("synthetic-15m");
        const QString llama2 = QString::fromStdString(shared_dir() + "/models/llama2-tokenizer/tokenizer.model");
        const Run w = pbllm_run({"synth", "--shape", "stories15m", "--layers", "1", "--dtype", "f16", "-o", dir,
                                 "--tokenizer", llama2, "--json"});
        QVERIFY2(w.code == 0, w.err.constData());
        QCOMPARE(w.json()["parameters"].toInteger(), 19428192); // 2 x 32000 x 288 + one block + norm

        // Headers only by default: dtypes and shapes, no statistics; the synthetic label shown.
        const Run info = pbllm_run({"info", dir, "--json"});
        QVERIFY2(info.code == 0, info.err.constData());
        const QJsonObject o = info.json();
        QCOMPARE(o["file_dtype"].toString(), QString("f16"));
        QVERIFY(o["synthetic"].toString().contains("benchmarks only"));
        const QJsonObject first = o["tensors"].toArray().first().toObject();
        QCOMPARE(first["dtype"].toString(), QString("Half"));
        QVERIFY(!first.contains("mean"));
        const Run stats = pbllm_run({"info", dir, "--json", "--stats"});
        QCOMPARE(stats.code, 0);
        const double std = stats.json()["tensors"].toArray().first().toObject()["std"].toDouble();
        QVERIFY2(std::abs(std - 0.02) < 0.001, qPrintable(QString::number(std)));
        QVERIFY(pbllm_run({"info", dir}).out.contains("SYNTHETIC"));

        // The mapped F16 weights run as they are, and greedy decoding picks what the libtorch
        // decoder picks from the float32 conversion.
        const Run gen = pbllm_run({"generate", dir, "--prompt", "Once upon a time", "-n", "8", "--json"});
        QVERIFY2(gen.code == 0, gen.err.constData());
        QCOMPARE(gen.json()["tokens"].toInt(), 8); // no early end of text: the comparison below means something
        const Run torch = pbllm_run({"generate", dir, "--prompt", "Once upon a time", "-n", "8", "--json", "--backend",
                                     "torch"});
        QVERIFY2(torch.code == 0, torch.err.constData());
        QCOMPARE(gen.json()["text"].toString(), torch.json()["text"].toString());
        const Run e = pbllm_run({"eval", dir, "--text", val(), "--seqlen", "64", "--max-windows", "2", "--json"});
        QVERIFY2(e.code == 0, e.err.constData());
        QCOMPARE(e.json()["windows"].toInt(), 2);
        QVERIFY(e.json()["ppl"].toDouble() > 1000); // random weights: near-uniform over 32000 pieces

        const Run unknown = pbllm_run({"synth", "--shape", "llama-9000b", "-o", tmp.filePath("x")});
        QCOMPARE(unknown.code, 1);
        QVERIFY2(unknown.err.contains("unknown model shape 'llama-9000b'"), unknown.err.constData());
        QCOMPARE(pbllm_run({"synth", "--shape", "stories15m"}).code, 2); // -o is required
        // A tokenizer with more tokens than the embedding has rows is refused (fewer is a padded vocabulary).
        const Run mismatch = pbllm_run({"synth", "--shape", "stories15m", "-o", tmp.filePath("y"), "--tokenizer",
                                        QString::fromStdString(shared_dir() + "/models/tokenizers-bpe/gpt2/tokenizer.json")});
        QCOMPARE(mismatch.code, 1);
        QVERIFY2(mismatch.err.contains("tokenizer has 50257 tokens but the stories15m shape has a vocabulary of 32000"),
                 mismatch.err.constData());
    }

    void evalAndGenerateJson()
    {
        const Run e = pbllm_run({"eval", model(), "--text", val(), "--max-windows", "4", "--json", "--threads", "1"});
        QCOMPARE(e.code, 0);
        QCOMPARE(e.json()["windows"].toInt(), 4);
        QCOMPARE(e.json()["tokens"].toInt(), 4 * 511);
        const double ppl = e.json()["ppl"].toDouble();
        QVERIFY(ppl > 2.0 && ppl < 10.0);
        QCOMPARE(e.json()["text_sha256"].toString(),
                 QString("5fc1fb0113df62b567fb271806cd645ce8d75f59c58ca0b764c03d3b6ff34ca6")); // SOURCES.md

        const Run g = pbllm_run({"generate", model(), "--prompt", "Once upon a time", "-n", "20", "--json"});
        QCOMPARE(g.code, 0);
        QVERIFY2(g.json()["text"].toString().startsWith("Once upon a time, there was a little girl named Lily."),
                 g.out.constData());
        QCOMPARE(g.json()["tokens"].toInt(), 20);
        QVERIFY(g.json()["tokens_per_second"].toDouble() > 0.0);
    }

    void convertToHfRoundTrip()
    {
        QTemporaryDir tmp;
        const QString out = tmp.filePath("hf");
        QCOMPARE(pbllm_run({"convert", model(), "--to", "hf", "-o", out}).code, 0);
        const QStringList eval = {"--text", val(), "--max-windows", "8", "--json"};
        const double a = pbllm_run(QStringList{"eval", model()} + eval).json()["ppl"].toDouble();
        const double b = pbllm_run(QStringList{"eval", out} + eval).json()["ppl"].toDouble();
        QVERIFY(a > 0.0);
        QVERIFY2(std::abs(a / b - 1.0) < 1e-4, qPrintable(QString("%1 vs %2").arg(a).arg(b)));
        const Run again = pbllm_run({"convert", model(), "--to", "hf", "-o", out});
        QCOMPARE(again.code, 1);
        QVERIFY(again.err.contains("refusing to overwrite"));
        QCOMPARE(pbllm_run({"convert", model(), "--to", "hf", "-o", out, "--force"}).code, 0);
    }

    void familiesEndToEnd_data()
    {
        QTest::addColumn<QString>("family");
#ifndef PBLLM_SANITIZER_BUILD // the same memory paths as SmolLM's under the sanitizers, at ~80 s a row there
        QTest::newRow("llama 3.1 (llama3 RoPE scaling, windows past the original context)") << "llama-3.1";
        QTest::newRow("mistral (sliding window)") << "mistral";
#endif
        QTest::newRow("qwen2.5 (q/k/v biases)") << "qwen2.5";
        QTest::newRow("smollm (tied embeddings, GQA 4/1)") << "smollm";
        QTest::newRow("qwen3 (q/k norms, head_dim 16 over hidden 32)") << "qwen3";
    }
    // A small synthetic model of each family (GPT-2's tokenizer), through every command: loads,
    // evaluates, generates, quantizes (PB-GPTQ) to a packed file that reloads to the same numbers,
    // trains (QAT), and converts to a Hugging Face folder that loads back as the same family.
    void familiesEndToEnd()
    {
        QFETCH(QString, family);
        const ModelConfig c = small_family_config(family.toStdString());
        Model m = make_synthetic_model(c, 11);
        m.synthetic.clear(); // no label: the commands treat it as any model
        if (c.qk_norm())
            for (DecoderLayer& layer : m.layers) { // away from ones, so that they matter
                layer.q_norm = at::linspace(0.5, 1.5, 16);
                layer.k_norm = at::linspace(1.5, 0.5, 16);
            }
        QTemporaryDir tmp;
        const QString dir = tmp.filePath("model"), gpt2 = QString::fromStdString(shared_dir() + "/models/tokenizers-bpe/gpt2/tokenizer.json");
        HfExportOptions options;
        options.tokenizer_path = gpt2.toStdString();
        save_hf(m, dir.toStdString(), options);

        const Run info = pbllm_run({"info", dir, "--json"});
        QVERIFY2(info.code == 0, info.err.constData());
        QCOMPARE(info.json()["config"].toObject()["arch"].toString(), QString::fromStdString(c.arch));
        QCOMPARE(info.json()["parameters"].toInteger(), c.parameter_count());
        // Random weights of std 0.02: logits near zero, perplexity near the vocabulary's size. The
        // windows (48 tokens) pass Llama 3.1's original context (16) and stay in Mistral's window (32)...
        const QString train = QString::fromStdString(tinystories_train_path());
        const QStringList eval_args = {"--text", val(), "--seqlen", family == "mistral" ? "32" : "48", "--max-windows", "2", "--json"};
        const Run e = pbllm_run(QStringList{"eval", dir} + eval_args);
        QVERIFY2(e.code == 0, e.err.constData());
        const double ppl = e.json()["ppl"].toDouble();
        QVERIFY2(ppl > 0.5 * c.vocab_size && ppl < 2.0 * c.vocab_size, qPrintable(QString::number(ppl)));
        if (family == "mistral") { // ...and longer windows than Mistral's are refused, not silently wrong
            const Run long_windows = pbllm_run({"eval", dir, "--text", val(), "--seqlen", "48", "--max-windows", "1"});
            QCOMPARE(long_windows.code, 1);
            QVERIFY2(long_windows.err.contains("sliding"), long_windows.err.constData());
        }
        const Run g = pbllm_run({"generate", dir, "--prompt", "Once upon a time", "-n", "8", "--json"});
        QVERIFY2(g.code == 0, g.err.constData());
        QVERIFY(g.json()["text"].toString().startsWith("Once upon a time")); // the decoders' logits: tst_forward

        // PB-GPTQ into a packed file: its perplexity reloads exactly, and runs from its bits.
        const QString packed = tmp.filePath("q.pbllm.h5");
        const Run q = pbllm_run({"quantize", dir, "--calib", train, "-o", packed, "--nsamples", "4", "--seqlen", "32",
                                 "--eval", val(), "--eval-windows", "2", "--json"});
        QVERIFY2(q.code == 0, q.err.constData());
        QCOMPARE(q.json()["layers"].toArray().size(), 7 * c.n_layers); // the (tied) head is not quantized twice
        const double after = q.json()["ppl_after"].toDouble();
        const QStringList packed_eval = {"--text", val(), "--max-windows", "2", "--json"}; // quantize's windows
        const Run dequantized = pbllm_run(QStringList{"eval", packed, "--packed", "off"} + packed_eval);
        QVERIFY2(dequantized.code == 0, dequantized.err.constData());
        QCOMPARE(dequantized.json()["ppl"].toDouble(), after);
        const Run from_bits = pbllm_run(QStringList{"eval", packed} + packed_eval);
        QCOMPARE(from_bits.json()["packed"].toBool(), true);
        QVERIFY2(std::abs(from_bits.json()["ppl"].toDouble() / after - 1.0) < 1e-4, from_bits.out.constData());
        const Run packed_info = pbllm_run({"info", packed, "--json"});
        QCOMPARE(packed_info.json()["config"].toObject(), info.json()["config"].toObject());
        QCOMPARE(packed_info.json()["tokenizer"].toString(), QString("(embedded)"));
        const Run packed_gen = pbllm_run({"generate", packed, "--prompt", "Once upon a time", "-n", "8", "--json"});
        QVERIFY2(packed_gen.code == 0 && packed_gen.json()["packed"].toBool(), packed_gen.err.constData());

        // To a Hugging Face folder (the embedded tokenizer written out) and back: the same family,
        // the same tokens, the same perplexity.
        const QString hf = tmp.filePath("hf");
        const Run conv = pbllm_run({"convert", packed, "--to", "hf", "-o", hf});
        QVERIFY2(conv.code == 0, conv.err.constData());
        const Run hf_info = pbllm_run({"info", hf, "--json"});
        QCOMPARE(hf_info.json()["config"].toObject(), info.json()["config"].toObject());
        QVERIFY(hf_info.json()["tokenizer"].toString().endsWith("tokenizer.json"));
        const Run hf_eval = pbllm_run(QStringList{"eval", hf} + packed_eval);
        QVERIFY2(hf_eval.code == 0, hf_eval.err.constData());
        QVERIFY2(std::abs(hf_eval.json()["ppl"].toDouble() / after - 1.0) < 1e-4, hf_eval.out.constData());
        const QJsonArray ids = pbllm_run({"tokenize", hf, "--text", "Hello world, naïve 🦙 12345!", "--json"}).json()["ids"].toArray();
        QJsonArray expected;
        for (int id : Tokenizer::from_file(gpt2.toStdString()).encode("Hello world, naïve 🦙 12345!"))
            expected.append(id);
        QCOMPARE(ids, expected);

        // Quantization-aware training keeps the family too.
        const QString trained = tmp.filePath("qat.pbllm.h5");
        const Run qat = pbllm_run({"qat", dir, "--train", train, "--steps", "2", "--batch", "1", "--accum", "1", "--seqlen",
                                   "32", "--lr", "1e-3", "-o", trained, "--json"});
        QVERIFY2(qat.code == 0, qat.err.constData());
        const Run qat_eval = pbllm_run(QStringList{"eval", trained} + packed_eval);
        QVERIFY2(qat_eval.code == 0, qat_eval.err.constData());
        QVERIFY(qat_eval.json()["ppl"].toDouble() > 1.0);
        QCOMPARE(pbllm_run({"info", trained, "--json"}).json()["config"].toObject(), info.json()["config"].toObject());
    }

    void tokenizeCommand()
    {
        const QString gpt2 = QString::fromStdString(shared_dir() + "/models/tokenizers-bpe/gpt2/tokenizer.json");
        const QString text = "Hello world, naïve 🦙 12345!";
        const Run r = pbllm_run({"tokenize", "--tokenizer", gpt2, "--text", text, "--json", "--decode"});
        QCOMPARE(r.code, 0);
        const QJsonObject o = r.json();
        const std::vector<int> expected = Tokenizer::from_file(gpt2.toStdString()).encode(text.toStdString());
        QCOMPARE(o["ids"].toArray().size(), static_cast<qsizetype>(expected.size()));
        for (std::size_t i = 0; i < expected.size(); ++i)
            QCOMPARE(o["ids"].toArray()[static_cast<qsizetype>(i)].toInt(), expected[i]);
        QCOMPARE(o["ids"].toArray()[0].toInt(), 15496); // "Hello" in GPT-2's vocabulary
        QCOMPARE(o["kind"].toString(), QString("bpe"));
        QCOMPARE(o["decoded"].toString(), text);
        QVERIFY(o["round_trip"].toBool());

        // The model's own tokenizer (SentencePiece beside stories260K), plain output, BOS first.
        const Run plain = pbllm_run({"tokenize", model(), "--text", "Once upon a time", "--bos"});
        QCOMPARE(plain.code, 0);
        std::vector<int> spm = Tokenizer::from_file(tok512_path()).encode("Once upon a time", true);
        QStringList spm_text;
        for (int id : spm)
            spm_text << QString::number(id);
        QCOMPARE(QString::fromUtf8(plain.out).trimmed(), spm_text.join(' '));

        QCOMPARE(pbllm_run({"tokenize", "--tokenizer", gpt2}).code, 2); // neither --text nor --file
        const Run missing = pbllm_run({"tokenize", "--tokenizer", gpt2, "--file", "/nonexistent/x.txt"});
        QCOMPARE(missing.code, 1);
        QVERIFY(missing.err.contains("/nonexistent/x.txt"));
    }

    void badInputGivesOneLineReason()
    {
        QTemporaryDir tmp;
        const QString missing = tmp.filePath("nothing.bin");
        const Run r = pbllm_run({"eval", missing, "--text", val()});
        QCOMPARE(r.code, 1);
        QVERIFY(r.err.contains(missing.toUtf8()));
        QCOMPARE(r.err.trimmed().count('\n'), 0);
        write_bytes(tmp.filePath("short.bin"), std::string(40, '\x01'));
        const Run s = pbllm_run({"info", tmp.filePath("short.bin")});
        QCOMPARE(s.code, 1);
        QVERIFY(s.err.contains("short.bin"));
        const Run cuda = pbllm_run({"info", model(), "--device", "cuda"});
        QVERIFY(cuda.code != 0); // no CUDA in Debian's libtorch: refused with a reason, not a crash
        QVERIFY(!cuda.err.isEmpty());
    }

    void quantizeJsonContract()
    {
        QTemporaryDir tmp;
        const QString train = QString::fromStdString(tinystories_train_path());
        const QString out = tmp.filePath("q.pbllm.h5");
        const Run q = pbllm_run({"quantize", model(), "--calib", train, "-o", out, "--nsamples", "8", "--seqlen", "128",
                                 "--salient", "0.2", "--eval", val(), "--eval-windows", "4", "--json"});
        QCOMPARE(q.code, 0);
        const QJsonObject o = q.json();
        QVERIFY2(std::abs(o["salient_ratio"].toDouble() - 0.2) < 0.005, q.out.constData());
        const QJsonObject bits = o["bits_per_weight"].toObject();
        for (const char* key : {"headline", "with_bitmap", "with_index", "measured"})
            QVERIFY2(bits[key].toDouble() > 1.0, key);
        QVERIFY(std::abs(bits["with_bitmap"].toDouble() - bits["headline"].toDouble() - 1.0) < 1e-9);
        QVERIFY(o["seconds"].toDouble() > 0.0);
        QVERIFY(o["ppl_after"].toDouble() > o["ppl_before"].toDouble());
        QCOMPARE(o["layers"].toArray().size(), 35);
        // info reads the same numbers back from the file, and eval on it gives ppl_after.
        const Run info = pbllm_run({"info", out, "--json"});
        QCOMPARE(info.code, 0);
        QCOMPARE(info.json()["salient_ratio"].toDouble(), o["salient_ratio"].toDouble());
        QCOMPARE(info.json()["bits_per_weight"].toObject()["measured"].toDouble(), bits["measured"].toDouble());
        QCOMPARE(info.json()["tokenizer"].toString(), QString("(embedded)"));
        const Run dequantized = pbllm_run({"eval", out, "--text", val(), "--max-windows", "4", "--packed", "off", "--json"});
        QCOMPARE(dequantized.json()["ppl"].toDouble(), o["ppl_after"].toDouble());
        QCOMPARE(dequantized.json()["packed"].toBool(), false);
        // By default the Linears run from their bits: the same perplexity up to float32 summation order.
        const Run eval = pbllm_run({"eval", out, "--text", val(), "--max-windows", "4", "--json"});
        QCOMPARE(eval.json()["packed"].toBool(), true);
        QVERIFY2(std::abs(eval.json()["ppl"].toDouble() / o["ppl_after"].toDouble() - 1.0) < 1e-4, eval.out.constData());
        const QStringList gen = {"generate", out, "--prompt", "Once upon a time", "-n", "40", "--json"};
        const Run packed_text = pbllm_run(gen), dequantized_text = pbllm_run(gen + QStringList{"--packed", "off"});
        QCOMPARE(packed_text.json()["packed"].toBool(), true);
        QCOMPARE(packed_text.json()["text"].toString(), dequantized_text.json()["text"].toString());
        const Run bad_packed = pbllm_run({"eval", out, "--text", val(), "--packed", "maybe"});
        QCOMPARE(bad_packed.code, 2);
        QVERIFY2(bad_packed.err.contains("--packed must be on or off"), bad_packed.err.constData());
        // To a Hugging Face folder, the embedded SentencePiece model written out as it came in.
        const QString hf = tmp.filePath("hf");
        QCOMPARE(pbllm_run({"convert", out, "--to", "hf", "-o", hf}).code, 0);
        QVERIFY(read_bytes(hf + "/tokenizer.model") == read_bytes(QString::fromStdString(tok512_path())));
        // Never overwritten silently.
        const Run again = pbllm_run({"quantize", model(), "--calib", train, "-o", out, "--nsamples", "2", "--seqlen", "64"});
        QCOMPARE(again.code, 1);
        QVERIFY(again.err.contains("refusing to overwrite"));
        // Impossible settings are usage errors naming the setting.
        const Run bad = pbllm_run({"quantize", model(), "--calib", train, "-o", tmp.filePath("x.h5"), "--groupsize", "100"});
        QCOMPARE(bad.code, 2);
        QVERIFY2(bad.err.contains("groupsize 100"), bad.err.constData());
    }

    /// A plan that mixes methods per Linear (BiLLM on the MLPs, PB-GPTQ elsewhere) through the
    /// command line: the file reloads bit-identically, and `pbllm methods` lists the registry.
    void quantizeMixedMethodsFromAPlan()
    {
        QTemporaryDir tmp;
        const QString plan = tmp.filePath("plan.json"), out = tmp.filePath("mixed.pbllm.h5");
        QFile f(plan);
        QVERIFY(f.open(QIODevice::WriteOnly));
        f.write(R"({"billm_search": "weights", "rules": [{"pattern": "*.mlp.*", "method": "billm"}]})");
        f.close();
        const Run q = pbllm_run({"quantize", model(), "--calib", QString::fromStdString(tinystories_train_path()), "-o",
                                 out, "--nsamples", "8", "--seqlen", "128", "--plan", plan, "--eval", val(),
                                 "--eval-windows", "4", "--json"});
        QCOMPARE(q.code, 0);
        const QJsonObject o = q.json();
        QCOMPARE(o["plan"].toObject()["billm_search"].toString(), QString("weights"));
        const QJsonObject bits = o["bits_per_weight"].toObject();
        QVERIFY2(bits["measured"].toDouble() > 2.9 && bits["measured"].toDouble() < 3.9, q.out.constData());
        const Run eval = pbllm_run({"eval", out, "--text", val(), "--max-windows", "4", "--json"});
        QCOMPARE(eval.code, 0);
        // BiLLM Linears run dequantized, the rest from their bits (float32 summation order apart).
        QVERIFY2(std::abs(eval.json()["ppl"].toDouble() / o["ppl_after"].toDouble() - 1.0) < 1e-4, eval.out.constData());
        const Run off = pbllm_run({"eval", out, "--text", val(), "--max-windows", "4", "--packed", "off", "--json"});
        QCOMPARE(off.json()["ppl"].toDouble(), o["ppl_after"].toDouble()); // the reload is bit-identical
        QVERIFY2(eval.err.contains("15 Linears") && eval.err.contains("billm"), eval.err.constData());
        const Run listed = pbllm_run({"methods", "--json"});
        QCOMPARE(listed.code, 0);
        QStringList names;
        for (const QJsonValue& m : listed.json()["methods"].toArray())
            names << m.toObject()["name"].toString();
        QCOMPARE(names, (QStringList{"pb-gptq", "rtn", "gptq", "qat", "billm", "arb", "arb-x", "arb-rc"}));
        // The settings' table: listed by pbllm methods, and each one a flag of quantize and sweep.
        QStringList keys, help_missing;
        const Run quantize_help = pbllm_run({"quantize", "--help"}), sweep_help = pbllm_run({"sweep", "--help"});
        for (const QJsonValue& v : listed.json()["settings"].toArray()) {
            const QJsonObject s = v.toObject();
            keys << s["key"].toString();
            const QString flag = s["flag"].toString();
            if (!flag.isEmpty() && (!quantize_help.out.contains(flag.toUtf8() + " <X>") ||
                                    (flag != "--method" && !sweep_help.out.contains(flag.toUtf8() + " <LIST>"))))
                help_missing << flag;
        }
        QCOMPARE(keys, (QStringList{"salient_ratio", "salient_bits", "bits", "metric", "binarizer", "method", "skip",
                                    "billm_search", "billm_compensation", "cgb", "scale_format"}));
        QVERIFY2(help_missing.isEmpty(), qPrintable(help_missing.join(", ")));
        const Run bad_bits = pbllm_run({"quantize", model(), "--calib", plan, "-o", tmp.filePath("x.h5"), "--salient-bits", "9"});
        QCOMPARE(bad_bits.code, 2);
        QVERIFY2(bad_bits.err.contains("--salient-bits: salient bits 9 must be 2..8 or 16"), bad_bits.err.constData());
        // An option no method of the run reads is refused, not ignored.
        const Run unread = pbllm_run({"quantize", model(), "--calib", plan, "-o", tmp.filePath("x.h5"), "--method", "arb",
                                      "--scale-format", "log8"});
        QCOMPARE(unread.code, 2);
        QVERIFY2(unread.err.contains("scale_format log8 is not read by arb (only by arb-rc)"), unread.err.constData());
        const Run unread_sweep = pbllm_run({"sweep", model(), "--calib", plan, "--eval", val(), "--methods", "pb-gptq,billm",
                                            "--scale-format", "log8"});
        QCOMPARE(unread_sweep.code, 2);
        QVERIFY2(unread_sweep.err.contains("--scale-format: none of the swept methods reads it (only arb-rc)"),
                 unread_sweep.err.constData());
        const Run unknown = pbllm_run({"quantize", model(), "--calib", plan, "-o", tmp.filePath("x.h5"), "--method", "bilm"});
        QCOMPARE(unknown.code, 2);
        QVERIFY2(unknown.err.contains("'bilm' is not one of pb-gptq, rtn, gptq, qat, billm, arb"), unknown.err.constData());
    }

    /// pbllm sweep: one row per method and setting it reads, sorted by measured bits, each row's
    /// perplexity that of its kept file, and the Pareto flags consistent with the rows.
    void sweepWritesOneTable()
    {
        QTemporaryDir tmp;
        const QString keep = tmp.filePath("kept"), table = tmp.filePath("pareto.json");
        const Run s = pbllm_run({"sweep", model(), "--calib", QString::fromStdString(tinystories_train_path()), "--eval", val(),
                                 "--eval-windows", "3", "--nsamples", "4", "--seqlen", "128", "--methods", "pb-gptq,gptq,billm",
                                 "--salient", "0.1,0.3", "--bits", "3", "--billm-search", "weights", "--keep", keep, "-o",
                                 table});
        QCOMPARE(s.code, 0);
        QVERIFY2(s.out.contains("| method | settings |"), s.out.constData());
        QFile f(table);
        QVERIFY(f.open(QIODevice::ReadOnly));
        const QJsonObject report = QJsonDocument::fromJson(f.readAll()).object();
        const QJsonArray rows = report["rows"].toArray();
        QCOMPARE(rows.size(), 4); // pb-gptq x 2 ratios, gptq x 1 bit-width, billm x 1 search
        double last_bits = 0.0;
        QStringList settings;
        for (const QJsonValue& v : rows) {
            const QJsonObject r = v.toObject();
            const double bits = r["bits_per_weight"].toObject()["measured"].toDouble();
            QVERIFY(bits >= last_bits);
            last_bits = bits;
            settings << r["method"].toString() + " " + r["settings"].toString();
            bool dominated = false;
            for (const QJsonValue& w : rows)
                dominated |= w != v && w.toObject()["bits_per_weight"].toObject()["measured"].toDouble() <= bits &&
                             w.toObject()["ppl"].toDouble() < r["ppl"].toDouble();
            QCOMPARE(r["pareto"].toBool(), !dominated);
        }
        settings.sort();
        QCOMPARE(settings, (QStringList{"billm billm_search=weights", "gptq bits=3", "pb-gptq salient_ratio=0.1",
                                        "pb-gptq salient_ratio=0.3"}));
        // Each row's perplexity is its file's, evaluated apart.
        const QStringList kept = QDir(keep).entryList({"*billm.pbllm.h5"});
        QCOMPARE(kept.size(), 1);
        const Run eval = pbllm_run({"eval", keep + "/" + kept.front(), "--text", val(), "--max-windows", "3", "--packed",
                                    "off", "--json"});
        for (const QJsonValue& v : rows)
            if (v.toObject()["method"].toString() == "billm")
                QCOMPARE(v.toObject()["ppl"].toDouble(), eval.json()["ppl"].toDouble());
        const Run bad = pbllm_run({"sweep", model(), "--calib", val(), "--eval", val(), "--methods", "pb-gptq,qat"});
        QCOMPARE(bad.code, 2);
        QVERIFY2(bad.err.contains("'qat' is not one of pb-gptq, rtn, gptq, billm, arb"), bad.err.constData());
    }

    void quantizeKilledMidwayResumesToTheSameFile()
    {
        QTemporaryDir tmp;
        QProcessEnvironment env = QProcessEnvironment::systemEnvironment();
        env.insert("SOURCE_DATE_EPOCH", "1700000000"); // the files' creation time, so bytes compare
        const QStringList common = {"quantize", model(), "--calib", QString::fromStdString(tinystories_train_path()),
                                    "--nsamples", "8", "--seqlen", "128"};
        const QString whole = tmp.filePath("whole.pbllm.h5"), cut = tmp.filePath("cut.pbllm.h5");
        QCOMPARE(pbllm_run(common + QStringList{"-o", whole}, env).code, 0);
        QProcessEnvironment killer = env;
        killer.insert("PBLLM_KILL_AFTER_LAYER", "3");
        const Run killed = pbllm_run(common + QStringList{"-o", cut}, killer);
        QCOMPARE(killed.code, -1); // died by SIGKILL
        QVERIFY2(killed.err.contains("layer 3/5:"), killed.err.constData());
        QVERIFY(!QFileInfo::exists(cut));
        QVERIFY(QFileInfo(cut + ".partial").isDir());
        const Run fresh = pbllm_run(common + QStringList{"-o", cut}, env);
        QCOMPARE(fresh.code, 1);
        QVERIFY2(fresh.err.contains("--resume"), fresh.err.constData());
        const Run other = pbllm_run(common + QStringList{"-o", cut, "--resume", "--salient", "0.3"}, env);
        QCOMPARE(other.code, 1);
        QVERIFY2(other.err.contains("different plan") && other.err.contains("salient_ratio"), other.err.constData());
        const Run resumed = pbllm_run(common + QStringList{"-o", cut, "--resume", "--json"}, env);
        QCOMPARE(resumed.code, 0);
        QVERIFY(read_bytes(cut) == read_bytes(whole));
        QVERIFY(!QFileInfo::exists(cut + ".partial"));
        const QJsonObject o = resumed.json();
        QCOMPARE(o["resumed_layers"].toInt(), 3);
        QVERIFY(o["peak_resident_bytes"].toDouble() > 0);
        // Sampled anonymous memory, within the plan (sanitizer builds add shadow memory and a
        // quarantine of freed blocks, which no plan counts).
        const double peak = o["peak_anonymous_bytes"].toDouble();
        QVERIFY(peak > 0);
#ifndef PBLLM_SANITIZER_BUILD
        QVERIFY2(peak <= o["planned_working_bytes"].toDouble(),
                 qPrintable(QString("%1 of %2 planned").arg(peak).arg(o["planned_working_bytes"].toDouble())));
#endif
        const QJsonArray times = o["layer_times"].toArray();
        QCOMPARE(times.size(), 5);
        for (int l = 0; l < 5; ++l) {
            QCOMPARE(times[l].toObject()["resumed"].toBool(), l < 3);
            QCOMPARE(times[l].toObject()["seconds"].toDouble() > 0, l >= 3);
            QCOMPARE(times[l].toObject()["peak_anonymous_bytes"].toDouble() > 0, l >= 3);
        }
        QCOMPARE(o["layers"].toArray().size(), 35);
    }

    void qatCommand()
    {
        QTemporaryDir tmp;
        const QString train = QString::fromStdString(tinystories_train_path());
        const QString out = tmp.filePath("qat.pbllm.h5"), ckpt = tmp.filePath("run.ckpt");
        const QString held_out = tmp.filePath("held_out.txt"); // a few windows: the final evaluation reads all of it
        write_bytes(held_out, read_bytes(val()).substr(0, 8000));
        const QStringList common = {"qat", model(), "--train", train, "--steps", "4", "--batch", "1", "--accum", "1",
                                    "--seqlen", "64", "--lr", "1e-3", "--json"};
        const Run r = pbllm_run(common + QStringList{"-o", out, "--checkpoint", ckpt, "--checkpoint-every", "2", "--eval",
                                                     held_out, "--eval-windows", "2"});
        QCOMPARE(r.code, 0);
        const QJsonObject o = r.json();
        QCOMPARE(o["steps"].toInt(), 4);
        QCOMPARE(o["history"].toArray().size(), 4);
        QVERIFY(o["tokens_per_second"].toDouble() > 0);
        QVERIFY(o["ppl_after"].toDouble() > 1.0);
        QVERIFY(std::abs(o["salient_ratio"].toDouble() - 0.1) < 0.002);
        QCOMPARE(o["training"].toObject()["init"].toString(), QString("magnitude"));
        QVERIFY(QFileInfo::exists(ckpt));
        // The packed result evaluates like any model; the checkpoint of step 4 resumes to nothing new.
        QCOMPARE(pbllm_run({"eval", out, "--text", held_out, "--packed", "off", "--json"}).json()["ppl"].toDouble(),
                 o["ppl_after"].toDouble());
        const Run resumed = pbllm_run(common + QStringList{"-o", tmp.filePath("again.pbllm.h5"), "--resume", ckpt});
        QCOMPARE(resumed.code, 0);
        QCOMPARE(resumed.json()["history"].toArray().size(), 0);
        const Run bad = pbllm_run(common + QStringList{"-o", tmp.filePath("x.h5"), "--kd", "2"});
        QCOMPARE(bad.code, 2);
        QVERIFY(bad.err.contains("--kd must be a number in [0"));
    }

    void calibrateAndSaliency()
    {
        QTemporaryDir tmp;
        const QString calib = tmp.filePath("calib.h5");
        QCOMPARE(pbllm_run({"calibrate", model(), "--calib", QString::fromStdString(tinystories_train_path()), "-o", calib,
                            "--nsamples", "4", "--seqlen", "64"}).code, 0);
        const Run s = pbllm_run({"saliency", model(), "--calib", calib, "--layer", "model.layers.0.mlp.down_proj",
                                 "--salient", "0.1", "--json"});
        QCOMPARE(s.code, 0);
        const QJsonArray layers = s.json()["layers"].toArray();
        QCOMPARE(layers.size(), 1);
        const QJsonObject l = layers[0].toObject();
        QCOMPARE(l["cols"].toInt(), 172);
        QVERIFY(std::abs(l["salient_ratio"].toDouble() - 0.1) < 0.001);
        QCOMPARE(l["weights_histogram"].toObject()["counts"].toArray().size(), 64);
        // A quantization from the calibration file replays its windows.
        const QString out = tmp.filePath("q.pbllm.h5");
        QCOMPARE(pbllm_run({"quantize", model(), "--calib", calib, "-o", out}).code, 0);
        const Run unknown = pbllm_run({"saliency", model(), "--calib", calib, "--layer", "nope"});
        QCOMPARE(unknown.code, 1);
        QVERIFY(unknown.err.contains("no Linear named 'nope'"));
    }

    void defaultModelFromSharedFolder()
    {
        DefaultModelSearch s;
        s.shared_dirs = {"/nonexistent", shared_dir()};
        const ModelLocation where = locate_default_model(s);
        QCOMPARE(where.how, std::string("shared folder"));
        QVERIFY(QString::fromStdString(where.tokenizer_path).endsWith("tok512.model"));
        // The CLI without MODEL uses it.
        const Run r = pbllm_run({"info", "--json"});
        QCOMPARE(r.code, 0);
        QCOMPARE(r.json()["parameters"].toInteger(), 260032);
    }

    void defaultModelDownloadIsVerified()
    {
        // curl with a file:// URL exercises the real download path without network.
        QTemporaryDir tmp;
        DefaultModelSearch s;
        s.user_dir = tmp.filePath("data/pbllm/models/stories260K").toStdString();
        s.url = "file://" + shared_dir() + "/models/stories260K";
        const ModelLocation got = locate_default_model(s);
        QCOMPARE(got.how, std::string("downloaded"));
        QVERIFY(QFileInfo::exists(QString::fromStdString(s.user_dir + "/stories260K.bin")));
        QCOMPARE(locate_default_model(s).how, std::string("user data folder")); // found next time

        // A server that hands out a different file is caught by the checksum.
        QTemporaryDir fake;
        write_bytes(fake.filePath("stories260K.bin"), "not the model");
        s.user_dir = tmp.filePath("other").toStdString();
        s.url = "file://" + fake.path().toStdString();
        try {
            locate_default_model(s);
            QFAIL("a corrupt download was accepted");
        } catch (const Error& e) {
            QVERIFY2(QString(e.what()).contains("SHA-256 does not match"), e.what());
            QVERIFY2(QString(e.what()).contains("Put stories260K.bin and tok512.model"), e.what());
        }
        QVERIFY(!QFileInfo::exists(QString::fromStdString(s.user_dir + "/stories260K.bin")));

        // No network (an unreachable source): a clear message saying where to put the files.
        s.url = "file:///nonexistent/place";
        try {
            locate_default_model(s);
            QFAIL("a failed download was accepted");
        } catch (const Error& e) {
            QVERIFY2(QString(e.what()).contains("download of file:///nonexistent/place/stories260K.bin failed"), e.what());
            QVERIFY2(QString(e.what()).contains(QString::fromStdString(s.user_dir)), e.what());
        }
    }
};

QTEST_GUILESS_MAIN(TestCli)
#include "tst_cli.moc"
