// SentencePiece through the dlopen'ed plugin: vocabulary facts of tok512, round trips, the
// streaming detokenizer against SentencePiece's own decoder, and bad models.
#include "core/error.h"
#include "core/evaluation.h"
#include "core/tokenizer.h"
#include "tests/support/test_support.h"

#include <QTemporaryDir>
#include <QtTest>

using namespace pbllm;
using namespace pbllm::test;

class TestTokenizer : public QObject {
    Q_OBJECT

private Q_SLOTS:
    void vocabularyOfTok512()
    {
        const Tokenizer tok = Tokenizer::from_file(tok512_path());
        QCOMPARE(tok.vocab_size(), 512);
        QCOMPARE(tok.bos_id(), 1);
        QCOMPARE(tok.eos_id(), 2);
        QCOMPARE(tok.piece(3), std::string("<0x00>")); // ids 3..258 are byte-fallback pieces
        QCOMPARE(tok.token_bytes(3 + 'A'), std::string("A"));
        QVERIFY(tok.token_bytes(1).empty()); // control tokens produce no text
        QVERIFY(QString::fromStdString(spm_plugin_path()).endsWith("libpbllm_spm.so"));
    }

    void countsTokensOfValidationText()
    {
        // SOURCES.md: tinystories_val.txt is 393,012 tokens with tok512.
        const Tokenizer tok = Tokenizer::from_file(tok512_path());
        QCOMPARE(tok.encode(read_text_file(tinystories_val_path())).size(), std::size_t(393012));
    }

    void roundTrips_data()
    {
        QTest::addColumn<QString>("text");
        QTest::newRow("plain") << "Once upon a time, there was a little girl named Lily.";
        QTest::newRow("newlines") << "One day.\n\nThe end.";
        QTest::newRow("byte fallback") << QString::fromUtf8("naïve café, 日本語 and emoji 🙂!");
        QTest::newRow("digits") << "In 2023 they counted 1,234,567 stars.";
    }

    void roundTrips()
    {
        QFETCH(QString, text);
        const Tokenizer tok = Tokenizer::from_file(tok512_path());
        const std::string utf8 = text.toStdString();
        const std::vector<int> ids = tok.encode(utf8);
        QVERIFY(!ids.empty());
        QCOMPARE(tok.decode(ids), utf8);
        // Streaming pieces, assembled, equal SentencePiece's own decoder (also after BOS).
        std::vector<int> with_bos = tok.encode(utf8, true);
        QCOMPARE(with_bos.front(), 1);
        StreamingDetokenizer stream(tok);
        std::string assembled;
        for (int id : with_bos) {
            const std::string part = stream.push(id);
            // Every emitted chunk is whole UTF-8.
            QVERIFY(QString::fromUtf8(part.data(), static_cast<int>(part.size())).toStdString() == part);
            assembled += part;
        }
        assembled += stream.flush();
        QCOMPARE(assembled, utf8);
    }

    void rejectsBadModels()
    {
        QTemporaryDir dir;
        write_bytes(dir.filePath("bad.model"), "this is not a protobuf");
        try {
            Tokenizer::from_file(dir.filePath("bad.model").toStdString());
            QFAIL("garbage accepted as a tokenizer");
        } catch (const Error& e) {
            QVERIFY2(QString(e.what()).contains("bad.model: not a SentencePiece model"), e.what());
        }
        try {
            Tokenizer::from_file(dir.filePath("absent.model").toStdString());
            QFAIL("missing tokenizer accepted");
        } catch (const Error& e) {
            QVERIFY2(QString(e.what()).contains("absent.model: tokenizer model not found"), e.what());
        }
        const Tokenizer tok = Tokenizer::from_file(tok512_path());
        QVERIFY_THROWS_EXCEPTION(Error, tok.decode({5, 9999}));
        QVERIFY_THROWS_EXCEPTION(Error, tok.token_bytes(-1));
    }

    void findsTokenizerBesideModel()
    {
        QCOMPARE(QFileInfo(QString::fromStdString(find_tokenizer_beside(stories260k_path()))).fileName(),
                 QString("tok512.model"));
        QTemporaryDir dir;
        write_bytes(dir.filePath("model.bin"), "x");
        QVERIFY(find_tokenizer_beside(dir.filePath("model.bin").toStdString()).empty());
        write_bytes(dir.filePath("a.model"), "x");
        write_bytes(dir.filePath("b.model"), "x");
        QVERIFY(find_tokenizer_beside(dir.filePath("model.bin").toStdString()).empty()); // ambiguous
        write_bytes(dir.filePath("tokenizer.model"), "x");
        QVERIFY(QString::fromStdString(find_tokenizer_beside(dir.path().toStdString())).endsWith("/tokenizer.model"));
    }
};

QTEST_GUILESS_MAIN(TestTokenizer)
#include "tst_tokenizer.moc"
