// Byte-level BPE from tokenizer.json: token ids identical to the Hugging Face tokenizers library on
// llama.cpp's 46 hard texts (GPT-2 in both serialisations, GPT-NeoX-20B with NFC and its space-run
// added tokens), SmolLM's digit splitting and the Llama 3 pre-tokenizer pattern worked by hand,
// streaming decode of split UTF-8, the embedded form, BOS/EOS from the files beside, and bad files.
#include "core/bpe_tokenizer.h"
#include "core/error.h"
#include "core/tokenizer.h"
#include "tests/support/test_support.h"

#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QStringList>
#include <QTemporaryDir>
#include <QtTest>

using namespace pbllm;
using namespace pbllm::test;

namespace {

std::string bpe_dir() { return shared_dir() + "/models/tokenizers-bpe"; }

/// llama.cpp's reference files: texts separated by "\n__ggml_vocab_test__\n" (one after each text),
/// and one line of ids per text.
struct ReferenceCase { std::string text; std::vector<int> ids; };
std::vector<ReferenceCase> reference_cases(const std::string& vocab)
{
    const std::string inp = read_bytes(QString::fromStdString(bpe_dir() + "/reference-ids/ggml-vocab-" + vocab + ".gguf.inp"));
    const std::string out = read_bytes(QString::fromStdString(bpe_dir() + "/reference-ids/ggml-vocab-" + vocab + ".gguf.out"));
    const std::string sep = "\n__ggml_vocab_test__\n";
    std::vector<ReferenceCase> cases;
    for (std::size_t at = 0; at < inp.size();) {
        const std::size_t end = inp.find(sep, at);
        if (end == std::string::npos)
            break;
        cases.push_back({inp.substr(at, end - at), {}});
        at = end + sep.size();
    }
    const QStringList lines = QString::fromStdString(out).split('\n');
    for (std::size_t i = 0; i < cases.size(); ++i)
        for (const QString& id : lines.value(static_cast<qsizetype>(i)).split(' ', Qt::SkipEmptyParts))
            cases[i].ids.push_back(id.toInt());
    return cases;
}

/// The vocabulary of a tokenizer.json read directly (an independent lookup of expected ids).
int vocab_id(const std::string& tokenizer_json, const QString& token)
{
    const QJsonObject root = QJsonDocument::fromJson(QByteArray::fromStdString(read_bytes(QString::fromStdString(tokenizer_json)))).object();
    const QJsonValue v = root.value("model").toObject().value("vocab").toObject().value(token);
    if (!v.isDouble())
        qFatal("token %s not in %s", qPrintable(token), tokenizer_json.c_str());
    return v.toInt();
}

QString ids_text(const std::vector<int>& ids)
{
    QStringList s;
    for (int id : ids)
        s << QString::number(id);
    return s.join(' ');
}

/// A byte-level tokenizer.json with the 256 byte tokens (id = byte) and the merges given as
/// "a b" strings over visible characters, each merge's result taking the next id.
std::string tiny_tokenizer_json(const QStringList& merges,
                                const QJsonObject& pre_tokenizer = {{"type", "ByteLevel"}, {"add_prefix_space", false}})
{
    QJsonObject vocab;
    // GPT-2's byte map written out independently: printable bytes map to themselves.
    int next = 256;
    for (int b = 0; b < 256; ++b) {
        const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        vocab.insert(QString(QChar(printable ? b : next++)), b);
    }
    int id = 256;
    for (const QString& m : merges)
        vocab.insert(QString(m).remove(' '), id++);
    QJsonObject model{{"type", "BPE"}, {"vocab", vocab}, {"merges", QJsonArray::fromStringList(merges)}};
    QJsonObject root{{"model", model},
                     {"pre_tokenizer", pre_tokenizer},
                     {"added_tokens", QJsonArray{QJsonObject{{"id", 300}, {"content", "<|end|>"}, {"special", true}}}}};
    return QJsonDocument(root).toJson().toStdString();
}

} // namespace

class TestBpeTokenizer : public QObject {
    Q_OBJECT

private Q_SLOTS:
    void matchesHuggingFaceIds_data()
    {
        QTest::addColumn<QString>("file");
        QTest::addColumn<QString>("reference");
        QTest::newRow("gpt2") << "gpt2/tokenizer.json" << "gpt-2";
        QTest::newRow("gpt2-hub-original") << "gpt2/tokenizer.hub-original.json" << "gpt-2";
        QTest::newRow("gpt-neox-20b") << "gpt-neox-20b/tokenizer.json" << "mpt";
    }
    void matchesHuggingFaceIds()
    {
        QFETCH(QString, file);
        QFETCH(QString, reference);
        const Tokenizer tok = Tokenizer::from_file(bpe_dir() + "/" + file.toStdString());
        QCOMPARE(tok.kind(), std::string("bpe"));
        const std::vector<ReferenceCase> cases = reference_cases(reference.toStdString());
        QCOMPARE(cases.size(), std::size_t(46));
        int empty = 0;
        for (const ReferenceCase& c : cases) {
            empty += c.ids.empty();
            const std::vector<int> ids = tok.encode(c.text);
            QVERIFY2(ids == c.ids, qPrintable(QString("text \"%1\": got %2, expected %3")
                                                  .arg(QString::fromStdString(c.text), ids_text(ids), ids_text(c.ids))));
            QCOMPARE(tok.decode(ids), c.text); // byte-level BPE keeps every byte (NFC aside: these texts are NFC)
        }
        QCOMPARE(empty, 1); // only the empty text has no ids: the parsing found every line
    }

    void gpt2VocabularyFacts()
    {
        const Tokenizer tok = Tokenizer::from_file(bpe_dir() + "/gpt2/tokenizer.json");
        QCOMPARE(tok.vocab_size(), 50257);
        QCOMPARE(tok.bos_id(), -1); // GPT-2 adds no BOS
        QCOMPARE(tok.piece(50256), std::string("<|endoftext|>"));
        QVERIFY(tok.token_bytes(50256).empty()); // a special token produces no text
        QCOMPARE(tok.token_bytes(220), std::string(" "));     // "Ġ"
        QCOMPARE(tok.token_bytes(198), std::string("\n"));    // "Ċ"
        // A special token written in the text is that token, as the tokenizers library does by default.
        const std::string file = bpe_dir() + "/gpt2/tokenizer.json";
        QCOMPARE(tok.encode("Hi<|endoftext|>"), (std::vector<int>{vocab_id(file, "Hi"), 50256}));
    }

    void smollmSplitsDigitsOneByOne()
    {
        const std::string file = bpe_dir() + "/smollm-135m/tokenizer.json";
        const Tokenizer tok = Tokenizer::from_file(file);
        QCOMPARE(tok.vocab_size(), 49153); // 49152 + the "[PAD]" this copy added
        // Digits(individual) then ByteLevel: "In", " ", "2", "0", "2", "4", " apples" by hand.
        const std::vector<int> expected{vocab_id(file, "In"), vocab_id(file, QString(QChar(0x120))),
                                        vocab_id(file, "2"),  vocab_id(file, "0"),
                                        vocab_id(file, "2"),  vocab_id(file, "4"),
                                        vocab_id(file, QString(QChar(0x120)) + "apples")};
        QCOMPARE(tok.encode("In 2024 apples"), expected);
        QCOMPARE(tok.encode("<|im_start|>"), std::vector<int>{1});
    }

    void llama3PatternSplitsAsWorkedByHand()
    {
        // The Llama 3 pre-tokenizer (Split, Isolated, then ByteLevel without its own pattern).
        const QString pattern = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}|"
                                " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
        const QJsonObject split{{"type", "Split"}, {"pattern", QJsonObject{{"Regex", pattern}}}, {"behavior", "Isolated"}};
        const QJsonObject byte_level{{"type", "ByteLevel"}, {"use_regex", false}};
        const std::string spec =
            QJsonDocument(QJsonObject{{"type", "Sequence"}, {"pretokenizers", QJsonArray{split, byte_level}}}).toJson().toStdString();
        const BpePreTokenizer pre = BpePreTokenizer::from_json(spec, "llama3");
        QVERIFY(pre.byte_level());
        // " 12345": the space stands alone (no letter follows it), digits go in threes; "'S" is a
        // contraction in any case; "  x": the first space alone, the second leads the word.
        const std::vector<std::string> expected{"Hello", " world", "'S", " ", "123", "45", " ok", "!!\n\n", " ", " x"};
        QCOMPARE(pre.split("Hello world'S 12345 ok!!\n\n  x"), expected);
        // GPT-2's pattern on the same text: digits in one run with their space, "'S" not a contraction.
        const BpePreTokenizer gpt2 = BpePreTokenizer::from_json("{\"type\": \"ByteLevel\"}", "gpt2");
        const std::vector<std::string> gpt2_expected{"Hello", " world", "'", "S", " 12345", " ok", "!!", "\n\n ", " x"};
        QCOMPARE(gpt2.split("Hello world'S 12345 ok!!\n\n  x"), gpt2_expected);
    }

    void splitBehaviours()
    {
        auto split = [](const char* behavior, bool invert = false) {
            const std::string spec = std::string("{\"type\": \"Split\", \"pattern\": {\"String\": \"-\"}, \"behavior\": \"") +
                                     behavior + "\", \"invert\": " + (invert ? "true" : "false") + "}";
            return BpePreTokenizer::from_json(spec, "split").split("a-b--c");
        };
        using V = std::vector<std::string>;
        QCOMPARE(split("Isolated"), (V{"a", "-", "b", "-", "-", "c"}));
        QCOMPARE(split("Removed"), (V{"a", "b", "c"}));
        QCOMPARE(split("MergedWithPrevious"), (V{"a-", "b-", "-", "c"}));
        QCOMPARE(split("MergedWithNext"), (V{"a", "-b", "-", "-c"}));
        QCOMPARE(split("Contiguous"), (V{"a", "-", "b", "--", "c"}));
        QCOMPARE(split("Removed", true), (V{"-", "-", "-"})); // each match stays its own piece
    }

    void mergesLowestRankFirstLeftmostAmongEquals()
    {
        QTemporaryDir dir;
        const QString path = dir.filePath("tokenizer.json");
        // Ranks: "a a" (256 "aa"), "b c" (257), "aa b" (258 "aab"), "a b" (259 "ab").
        write_bytes(path, tiny_tokenizer_json({"a a", "b c", "aa b", "a b"}));
        const Tokenizer tok = Tokenizer::from_file(path.toStdString());
        // "aaab": the leftmost "a a" merges first -> [aa, a, b]; then "a b" (259) is the only pair left
        // with a merge ("aa a" has none) -> [aa, ab].
        QCOMPARE(tok.encode("aaab"), (std::vector<int>{256, 259}));
        // "aabc": "a a" (rank 0) beats "b c" (1); then "aa b" (2) is not possible since b merged with c.
        QCOMPARE(tok.encode("aabc"), (std::vector<int>{256, 257}));
        QCOMPARE(tok.encode("aab"), std::vector<int>{258});
        QCOMPARE(tok.encode("x<|end|>"), (std::vector<int>{'x', 300}));
    }

    void streamsSplitCharactersWhole()
    {
        const Tokenizer tok = Tokenizer::from_file(bpe_dir() + "/gpt2/tokenizer.json");
        const std::string text = "Ünïcödé 🦙 нещо на Бълг and 日本語";
        const std::vector<int> ids = tok.encode(text);
        StreamingDetokenizer stream(tok);
        std::string joined;
        for (int id : ids) {
            const std::string part = stream.push(id);
            QVERIFY2(QString::fromUtf8(part.data(), static_cast<qsizetype>(part.size())).toUtf8().toStdString() == part,
                     "a partial UTF-8 character was emitted");
            joined += part;
        }
        joined += stream.flush();
        QCOMPARE(joined, text); // no leading space dropped, nothing lost
    }

    void embeddedFormAndSideFiles()
    {
        QTemporaryDir dir;
        write_bytes(dir.filePath("tokenizer.json"), tiny_tokenizer_json({"a b"}));
        write_bytes(dir.filePath("tokenizer_config.json"),
                    "{\"add_bos_token\": true, \"bos_token\": {\"content\": \"<|end|>\"}, \"eos_token\": \"<|end|>\"}");
        const Tokenizer tok = Tokenizer::from_file(dir.filePath("tokenizer.json").toStdString());
        QCOMPARE(tok.bos_id(), 300);
        QCOMPARE(tok.eos_id(), 300);
        QCOMPARE(tok.encode("ab", true), (std::vector<int>{300, 256}));
        const Tokenizer again = Tokenizer::from_bytes(tok.model_bytes(), "embedded");
        QCOMPARE(again.bos_id(), 300);
        QCOMPARE(again.eos_id(), 300);
        QCOMPARE(again.encode("abab b", true), tok.encode("abab b", true));
        QCOMPARE(again.model_bytes(), tok.model_bytes());
        QCOMPARE(std::string(again.file_bytes()), read_bytes(dir.filePath("tokenizer.json"))); // the header line apart

        // generation_config.json gives EOS when tokenizer_config.json does not.
        QTemporaryDir other;
        write_bytes(other.filePath("tokenizer.json"), tiny_tokenizer_json({}));
        write_bytes(other.filePath("generation_config.json"), "{\"eos_token_id\": [97, 300]}");
        const Tokenizer gen = Tokenizer::from_file(other.filePath("tokenizer.json").toStdString());
        QCOMPARE(gen.eos_id(), 97);
        QCOMPARE(gen.bos_id(), -1);
        QCOMPARE(gen.stop_ids(), (std::vector<int>{97, 300})); // every listed id ends a generation
        QVERIFY(gen.is_stop(300) && !gen.is_stop(98));
        // tokenizer_config.json's EOS first, then generation_config.json's further stop tokens
        // (Llama 3.1 Instruct: eos_token <|eot_id|>, eos_token_id [<|end_of_text|>, <|eom_id|>, <|eot_id|>]).
        write_bytes(other.filePath("tokenizer_config.json"), "{\"eos_token\": \"<|end|>\"}");
        const Tokenizer instruct = Tokenizer::from_file(other.filePath("tokenizer.json").toStdString());
        QCOMPARE(instruct.eos_id(), 300);
        QCOMPARE(instruct.stop_ids(), (std::vector<int>{300, 97}));
        const Tokenizer embedded = Tokenizer::from_bytes(instruct.model_bytes(), "embedded");
        QCOMPARE(embedded.stop_ids(), instruct.stop_ids());
        QCOMPARE(embedded.model_bytes(), instruct.model_bytes());
        QVERIFY(instruct.model_bytes().rfind("PBLLM-BPE 1 bos=-1 eos=300 stops=300,97\n", 0) == 0);
        // Written out as files (a packed checkpoint's tokenizer converted to a Hugging Face folder),
        // it reads back as the same tokenizer.
        for (const Tokenizer* original : {&tok, &instruct}) {
            QTemporaryDir out;
            write_tokenizer_files(*original, out.path().toStdString());
            const Tokenizer back = Tokenizer::from_file(out.filePath("tokenizer.json").toStdString());
            QCOMPARE(back.bos_id(), original->bos_id());
            QCOMPARE(back.eos_id(), original->eos_id());
            QCOMPARE(back.stop_ids(), original->stop_ids());
            QCOMPARE(back.model_bytes(), original->model_bytes());
        }
        QCOMPARE(QFileInfo(QString::fromStdString(find_tokenizer_beside(other.filePath("model.safetensors").toStdString())))
                     .fileName(),
                 QString("tokenizer.json"));
    }

    void badFilesNameTheKey_data()
    {
        QTest::addColumn<QString>("json");
        QTest::addColumn<QString>("message");
        QTest::newRow("not json") << "{\"model\": " << "not valid JSON";
        QTest::newRow("no model") << "{\"added_tokens\": []}" << "no \"model\" key";
        QTest::newRow("unigram") << "{\"model\": {\"type\": \"Unigram\"}}" << "model.type \"Unigram\" is not supported";
        QTest::newRow("empty vocab") << "{\"model\": {\"type\": \"BPE\", \"vocab\": {}}}" << "model.vocab is missing or empty";
        QTest::newRow("byte fallback") << "{\"model\": {\"byte_fallback\": true}}" << "model.byte_fallback";
        QTest::newRow("no byte tokens") << "{\"model\": {\"vocab\": {\"a\": 0}, \"merges\": []}}"
                                        << "model.vocab lacks the token for byte 33 (\"!\")";
        QTest::newRow("bad vocab id") << "{\"model\": {\"vocab\": {\"a\": -3}}}" << "model.vocab[\"a\"] is not a non-negative integer";
    }
    void badFilesNameTheKey()
    {
        QFETCH(QString, json);
        QFETCH(QString, message);
        QTemporaryDir dir;
        write_bytes(dir.filePath("tokenizer.json"), json.toStdString());
        try {
            Tokenizer::from_file(dir.filePath("tokenizer.json").toStdString());
            QFAIL("bad tokenizer.json accepted");
        } catch (const Error& e) {
            QVERIFY2(QString(e.what()).contains("tokenizer.json: ") && QString(e.what()).contains(message), e.what());
        }
    }

    void badPartsOfARealFileNameTheKey()
    {
        QTemporaryDir dir;
        const QString path = dir.filePath("tokenizer.json");
        auto expect = [&](const std::string& json, const QString& message) {
            write_bytes(path, json);
            try {
                Tokenizer::from_file(path.toStdString());
                QFAIL(qPrintable("accepted, expected: " + message));
            } catch (const Error& e) {
                QVERIFY2(QString(e.what()).contains(message), e.what());
            }
        };
        std::string bad_merge = tiny_tokenizer_json({"a b"});
        bad_merge.replace(bad_merge.find("\"a b\""), 5, "\"a bb\"");
        expect(bad_merge, "model.merges[0] \"a bb\" names a token that is not in model.vocab");
        expect(tiny_tokenizer_json({}, {{"type", "Metaspace"}}), "pre_tokenizer.type \"Metaspace\" is not supported");
        const QJsonObject bad_split{{"type", "Split"}, {"pattern", QJsonObject{{"Regex", "("}}}, {"behavior", "Isolated"}};
        expect(tiny_tokenizer_json({}, {{"type", "Sequence"}, {"pretokenizers", QJsonArray{bad_split, QJsonObject{{"type", "ByteLevel"}}}}}),
               "pre_tokenizer.pretokenizers[0].pattern.Regex: regular expression \"(\" does not compile");
        expect(tiny_tokenizer_json({}, {{"type", "Digits"}}), "pre_tokenizer has no ByteLevel step");
        write_bytes(dir.filePath("tokenizer_config.json"), "{\"eos_token\": \"<|nope|>\"}");
        expect(tiny_tokenizer_json({}), "tokenizer_config.json: eos_token \"<|nope|>\" is not a token of the vocabulary");
        QVERIFY_THROWS_EXCEPTION(Error, Tokenizer::from_bytes("PBLLM-BPE 1 bos=x\n{}", "embedded"));
        const std::string json = tiny_tokenizer_json({});
        QVERIFY_THROWS_EXCEPTION(Error, Tokenizer::from_bytes("PBLLM-BPE 1 bos=99999999999 eos=1\n" + json, "embedded"));
        QVERIFY_THROWS_EXCEPTION(Error, Tokenizer::from_bytes("PBLLM-BPE 1 bos=1 eos=400\n" + json, "embedded"));
        QCOMPARE(Tokenizer::from_bytes("PBLLM-BPE 1 bos=300 eos=-1\n" + json, "embedded").bos_id(), 300);
        for (const char* header : {"bos=1 eos=2 stops=", "bos=1 eos=2 stops=3,", "bos=1 eos=2 stops=3;4", "bos=1 eos=2 stop=3",
                                   "bos=1 eos=2 stops=3 ", "bos=1 eos=2stops=3", "bos=1eos=2", "bos=1 eos=2 ", "bos=1 eos=2 stops=,3"})
            QVERIFY_THROWS_EXCEPTION(Error, Tokenizer::from_bytes("PBLLM-BPE 1 " + std::string(header) + "\n" + json, "embedded"));
        QVERIFY_THROWS_EXCEPTION(Error, Tokenizer::from_bytes("PBLLM-BPE 1 bos=1 eos=2 stops=2,400\n" + json, "embedded"));
        QCOMPARE(Tokenizer::from_bytes("PBLLM-BPE 1 bos=-1 eos=2 stops=2,7\n" + json, "embedded").stop_ids(),
                 (std::vector<int>{2, 7}));
        const Tokenizer no_eos = Tokenizer::from_bytes("PBLLM-BPE 1 bos=-1 eos=-1 stops=5,7\n" + json, "embedded");
        QCOMPARE(no_eos.eos_id(), 5); // as generation_config.json reads: the first stop id
        QCOMPARE(no_eos.stop_ids(), (std::vector<int>{5, 7}));
        write_bytes(dir.filePath("tokenizer_config.json"), "{}");
        write_bytes(dir.filePath("generation_config.json"), "{\"eos_token_id\": [1, \"two\"]}");
        expect(tiny_tokenizer_json({}), "generation_config.json: eos_token_id");
    }
};

QTEST_GUILESS_MAIN(TestBpeTokenizer)
#include "tst_bpe_tokenizer.moc"
