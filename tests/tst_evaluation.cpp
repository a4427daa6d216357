// Perplexity by EVALUATION.md: the published reference for stories260K, an independent
// computation through the decoder, the Hugging Face round trip, text reading and bad settings.
#include "core/decoder.h"
#include "core/error.h"
#include "core/evaluation.h"
#include "core/system.h"
#include "core/hf_model.h"
#include "core/tokenizer.h"
#include "tests/support/test_support.h"

#include <QTemporaryDir>
#include <QtTest>

#include <cmath>

using namespace pbllm;
using namespace pbllm::test;

namespace {

const std::vector<int>& val_tokens()
{
    static const std::vector<int> tokens =
        Tokenizer::from_file(tok512_path()).encode(read_text_file(tinystories_val_path()));
    return tokens;
}

} // namespace

class TestEvaluation : public QObject {
    Q_OBJECT

private Q_SLOTS:
    void matchesReferencePerplexity()
    {
        // An independent implementation of the same protocol: PPL 5.047 over 767 windows.
        const EvalResult r = evaluate_perplexity(stories260k(), val_tokens());
        QCOMPARE(r.windows, std::int64_t(767));
        QCOMPARE(r.seqlen, 512);
        QCOMPARE(r.tokens, std::int64_t(767 * 511));
        QVERIFY2(std::abs(r.ppl / 5.047 - 1.0) < 1e-3, qPrintable(QString::number(r.ppl, 'f', 5)));
        QVERIFY(std::abs(std::exp(r.mean_nll) - r.ppl) < 1e-9);
    }

    void agreesWithStepwiseDecoder()
    {
        // Same windows scored token by token through the plain-loop decoder.
        const int seqlen = 128, windows = 3;
        double nll = 0.0;
        for (int w = 0; w < windows; ++w) {
            auto dec = make_decoder(stories260k(), DecoderBackend::Cpu);
            for (int t = 0; t < seqlen - 1; ++t) {
                const float* logits = dec->step(val_tokens()[w * seqlen + t]);
                double max = logits[0];
                for (int i = 1; i < 512; ++i)
                    max = std::max<double>(max, logits[i]);
                double sum = 0.0;
                for (int i = 0; i < 512; ++i)
                    sum += std::exp(logits[i] - max);
                nll -= logits[val_tokens()[w * seqlen + t + 1]] - max - std::log(sum);
            }
        }
        PerplexitySettings s;
        s.seqlen = seqlen;
        s.max_windows = windows;
        s.batch = 2; // a partial last batch too
        const EvalResult r = evaluate_perplexity(stories260k(), val_tokens(), s);
        QCOMPARE(r.windows, std::int64_t(windows));
        QVERIFY2(std::abs(r.mean_nll - nll / (windows * (seqlen - 1))) < 1e-5,
                 qPrintable(QString("%1 vs %2").arg(r.mean_nll).arg(nll / (windows * (seqlen - 1)))));
    }

    void huggingFaceRoundTripKeepsPerplexity()
    {
        QTemporaryDir tmp;
        save_hf(stories260k(), tmp.path().toStdString(), {true, tok512_path()});
        const Model hf = load_hf(tmp.path().toStdString());
        PerplexitySettings s;
        s.max_windows = 40;
        const double a = evaluate_perplexity(stories260k(), val_tokens(), s).ppl;
        const double b = evaluate_perplexity(hf, val_tokens(), s).ppl;
        QVERIFY2(std::abs(a / b - 1.0) < 1e-4, qPrintable(QString("%1 vs %2").arg(a).arg(b)));
    }

    void progressAndCancel()
    {
        PerplexitySettings s;
        s.max_windows = 6;
        s.batch = 2;
        std::vector<double> seen;
        std::vector<std::string> stages;
        evaluate_perplexity(stories260k(), val_tokens(), s, [&](double f, std::string_view stage) {
            seen.push_back(f);
            stages.emplace_back(stage);
            return true;
        });
        // Layer by layer over all six windows (one group): the start, 5 decoder layers, the head.
        QCOMPARE(seen.size(), std::size_t(7));
        QCOMPARE(seen.front(), 0.0);
        for (std::size_t i = 1; i < seen.size(); ++i)
            QVERIFY(seen[i] > seen[i - 1]);
        QCOMPARE(seen.back(), 1.0);
        QCOMPARE(stages[3], std::string("perplexity: layer 3/5"));
        QVERIFY_THROWS_EXCEPTION(Cancelled, evaluate_perplexity(stories260k(), val_tokens(), s,
                                                                [](double f, std::string_view) { return f < 0.3; }));
    }

    void threadsFollowTheLoad_data()
    {
        QTest::addColumn<int>("others");
        QTest::addColumn<int>("cores");
        QTest::addColumn<int>("configured");
        QTest::addColumn<int>("threads");
        QTest::newRow("quiet") << 0 << 2 << 2 << 2;
        QTest::newRow("one busy process on 2 cores") << 1 << 2 << 2 << 1;
        QTest::newRow("overloaded") << 5 << 2 << 2 << 1;
        QTest::newRow("busy, 16 cores, 8 asked for") << 3 << 16 << 8 << 8;
        QTest::newRow("busy, 16 cores, 16 asked for") << 3 << 16 << 16 << 13;
        QTest::newRow("unknown count") << -1 << 4 << 4 << 4;
    }

    void threadsFollowTheLoad()
    {
        QFETCH(int, others);
        QFETCH(int, cores);
        QFETCH(int, configured);
        QFETCH(int, threads);
        QCOMPARE(threads_beside(others, cores, configured), threads);
    }

    void readsTextFiles()
    {
        QTemporaryDir tmp;
        write_bytes(tmp.filePath("crlf.txt"), "a\r\nb\r\n\r\nc\rd");
        QCOMPARE(read_text_file(tmp.filePath("crlf.txt").toStdString()), std::string("a\nb\n\nc\rd"));
        write_bytes(tmp.filePath("latin1.txt"), "caf\xe9");
        try {
            read_text_file(tmp.filePath("latin1.txt").toStdString());
            QFAIL("invalid UTF-8 accepted");
        } catch (const Error& e) {
            QVERIFY2(QString(e.what()).contains("latin1.txt: not valid UTF-8"), e.what());
        }
        QVERIFY_THROWS_EXCEPTION(Error, read_text_file(tmp.filePath("absent.txt").toStdString()));
    }

    void rejectsImpossibleSettings_data()
    {
        QTest::addColumn<int>("seqlen");
        QTest::addColumn<int>("tokens");
        QTest::addColumn<QString>("expected");
        QTest::newRow("seqlen beyond context") << 1024 << 5000 << "exceeds the model's context length of 512";
        QTest::newRow("seqlen 1") << 1 << 5000 << "seqlen must be at least 2";
        QTest::newRow("text too short") << 512 << 100 << "fewer than one window of 512";
    }

    void rejectsImpossibleSettings()
    {
        QFETCH(int, seqlen);
        QFETCH(int, tokens);
        QFETCH(QString, expected);
        PerplexitySettings s;
        s.seqlen = seqlen;
        const std::vector<int> ids(val_tokens().begin(), val_tokens().begin() + tokens);
        try {
            evaluate_perplexity(stories260k(), ids, s);
            QFAIL("impossible setting accepted");
        } catch (const Error& e) {
            QVERIFY2(QString(e.what()).contains(expected), e.what());
        }
    }
};

QTEST_GUILESS_MAIN(TestEvaluation)
#include "tst_evaluation.moc"
