// Generation: the documented llama2.c greedy sample, seeded sampling, the sampler's
// distribution, top-k/top-p cut-offs, streaming, and bad settings.
#include "core/error.h"
#include "core/generation.h"
#include "core/sampler.h"
#include "core/synthetic.h"
#include "core/tokenizer.h"
#include "tests/support/test_support.h"

#include <QtTest>

#include <cmath>

using namespace pbllm;
using namespace pbllm::test;

class TestGeneration : public QObject {
    Q_OBJECT

private:
    Tokenizer tok() { return Tokenizer::from_file(tok512_path()); }

private Q_SLOTS:
    void greedyReproducesLlama2cSample_data()
    {
        QTest::addColumn<int>("backend");
        QTest::newRow("plain loops") << static_cast<int>(DecoderBackend::Cpu);
        QTest::newRow("libtorch ops") << static_cast<int>(DecoderBackend::Torch);
    }

    void greedyReproducesLlama2cSample()
    {
        QFETCH(int, backend);
        GenerationSettings s;
        s.max_new_tokens = 40;
        s.backend = static_cast<DecoderBackend>(backend);
        std::string streamed;
        const GenerationResult r = generate(stories260k(), tok(), "Once upon a time", s, [&](int, std::string_view t) {
            streamed += t;
            return true;
        });
        const std::string expected = "Once upon a time, there was a little girl named Lily. She loved to play outside "
                                     "in the park. One day, she saw a big, red ball.";
        QVERIFY2(r.text.rfind(expected, 0) == 0, r.text.c_str());
        QCOMPARE(streamed, r.completion);
        QCOMPARE(r.text, "Once upon a time" + r.completion);
        QCOMPARE(r.prompt_tokens.front(), 1);
        QCOMPARE(static_cast<int>(r.tokens.size()), 40);
        QVERIFY(r.tokens_per_second > 0.0);
        QVERIFY(r.time_to_first_token > 0.0 && r.time_to_first_token <= r.seconds);
    }

    void seededSamplingIsReproducible()
    {
        GenerationSettings s;
        s.max_new_tokens = 30;
        s.sampler.temperature = 1.0f;
        s.sampler.seed = 42;
        const std::string a = generate(stories260k(), tok(), "The dog", s).completion;
        const std::string b = generate(stories260k(), tok(), "The dog", s).completion;
        QCOMPARE(a, b);
        s.sampler.seed = 43;
        QVERIFY(generate(stories260k(), tok(), "The dog", s).completion != a);
        // top-k 1 is greedy whatever the temperature.
        s.sampler.top_k = 1;
        GenerationSettings greedy;
        greedy.max_new_tokens = 30;
        QCOMPARE(generate(stories260k(), tok(), "The dog", s).completion,
                 generate(stories260k(), tok(), "The dog", greedy).completion);
    }

    void samplerFollowsSoftmax()
    {
        const std::vector<float> logits = {0.0f, std::log(2.0f), std::log(3.0f), std::log(4.0f)};
        SamplerSettings s;
        s.temperature = 1.0f;
        s.seed = 7;
        Sampler sampler(s);
        std::vector<int> counts(4, 0);
        const int n = 40000;
        for (int i = 0; i < n; ++i)
            ++counts[sampler.sample(logits.data(), 4)];
        for (int i = 0; i < 4; ++i) {
            const double p = (i + 1) / 10.0, sd = std::sqrt(p * (1 - p) / n);
            QVERIFY2(std::abs(counts[i] / double(n) - p) < 5 * sd, qPrintable(QString::number(counts[i])));
        }
        // top-p 0.65: the nucleus is {3, 2} (0.4 + 0.3 >= 0.65); 0 and 1 never appear.
        s.top_p = 0.65f;
        Sampler nucleus(s);
        for (int i = 0; i < 2000; ++i)
            QVERIFY(nucleus.sample(logits.data(), 4) >= 2);
        // top-k 2 keeps ids 3 and 2 with probabilities 4/7 and 3/7.
        s.top_p = 1.0f;
        s.top_k = 2;
        Sampler topk(s);
        int threes = 0;
        for (int i = 0; i < n; ++i) {
            const int id = topk.sample(logits.data(), 4);
            QVERIFY(id >= 2);
            threes += id == 3;
        }
        QVERIFY(std::abs(threes / double(n) - 4.0 / 7.0) < 0.01);
    }

    void rejectsBadSettings_data()
    {
        QTest::addColumn<float>("temperature");
        QTest::addColumn<int>("top_k");
        QTest::addColumn<float>("top_p");
        QTest::addColumn<QString>("expected");
        QTest::newRow("negative temperature") << -1.0f << 0 << 1.0f << "temperature must be";
        QTest::newRow("NaN temperature") << std::nanf("") << 0 << 1.0f << "temperature must be";
        QTest::newRow("negative top-k") << 1.0f << -3 << 1.0f << "top-k must be >= 0";
        QTest::newRow("top-p zero") << 1.0f << 0 << 0.0f << "top-p must be in (0, 1]";
        QTest::newRow("top-p above one") << 1.0f << 0 << 1.5f << "top-p must be in (0, 1]";
    }

    void rejectsBadSettings()
    {
        QFETCH(float, temperature);
        QFETCH(int, top_k);
        QFETCH(float, top_p);
        QFETCH(QString, expected);
        GenerationSettings s;
        s.sampler.temperature = temperature;
        s.sampler.top_k = top_k;
        s.sampler.top_p = top_p;
        try {
            generate(stories260k(), tok(), "Hi", s);
            QFAIL("bad setting accepted");
        } catch (const Error& e) {
            QVERIFY2(QString(e.what()).contains(expected), e.what());
        }
    }

    void paddedVocabularyNeverSamplesPadding()
    {
        // GPT-2's 50257 tokens under an embedding padded to 50304 rows (as models are trained). The
        // padding rows are made to dominate the logits: sampling over the whole head would pick them.
        ModelConfig c;
        c.dim = 16; c.hidden_dim = 32; c.n_layers = 1; c.n_heads = 2; c.n_kv_heads = 2; c.vocab_size = 50304;
        c.max_seq_len = 64;
        Model m = make_synthetic_model(c, 4);
        m.output[50257].fill_(100.0f);
        m.output[50258].fill_(-100.0f);
        const Tokenizer gpt2 = Tokenizer::from_file(shared_dir() + "/models/tokenizers-bpe/gpt2/tokenizer.json");
        GenerationSettings s;
        s.max_new_tokens = 20;
        s.stop_at_eos = false;
        const GenerationResult r = generate(m, gpt2, "Hello", s);
        QCOMPARE(r.tokens.size(), std::size_t(20));
        for (int id : r.tokens)
            QVERIFY2(id < 50257, qPrintable(QString::number(id)));
        // A tokenizer with more tokens than the embedding has rows is refused.
        c.vocab_size = 50000;
        QVERIFY_THROWS_EXCEPTION(Error, generate(make_synthetic_model(c, 4), gpt2, "Hello", s));
    }

    void stopsAtEveryStopToken()
    {
        // A model that always predicts "\n" (198): constant embeddings, zero Linears (the stream
        // stays all ones through every layer) and a head whose only non-zero row is 198's.
        ModelConfig c;
        c.dim = 16; c.hidden_dim = 32; c.n_layers = 1; c.n_heads = 2; c.n_kv_heads = 2; c.vocab_size = 50257;
        c.max_seq_len = 64;
        Model m = make_synthetic_model(c, 4);
        m.tok_embeddings.fill_(1.0f);
        for (DecoderLayer& layer : m.layers)
            for (at::Tensor& w : layer.linear)
                w.zero_();
        m.output.zero_();
        m.output[198].fill_(1.0f);
        // GPT-2's tokenizer with generation_config.json listing "\n" as a second stop token.
        QTemporaryDir dir;
        const std::string gpt2 = shared_dir() + "/models/tokenizers-bpe/gpt2/tokenizer.json";
        copy_tokenizer_files(gpt2, dir.path().toStdString());
        write_bytes(dir.filePath("generation_config.json"), "{\"eos_token_id\": [50256, 198]}");
        const Tokenizer chat = Tokenizer::from_file(dir.filePath("tokenizer.json").toStdString());
        QCOMPARE(chat.stop_ids(), (std::vector<int>{50256, 198}));
        GenerationSettings s;
        s.max_new_tokens = 6;
        QCOMPARE(generate(m, chat, "Hello", s).tokens.size(), std::size_t(0));
        const GenerationResult plain = generate(m, Tokenizer::from_file(gpt2), "Hello", s); // EOS only
        QCOMPARE(plain.tokens, std::vector<int>(6, 198));
        s.stop_at_eos = false;
        QCOMPARE(generate(m, chat, "Hello", s).tokens, std::vector<int>(6, 198));
    }

    void stopsWhenAsked()
    {
        GenerationSettings s;
        s.max_new_tokens = 50;
        int calls = 0;
        const GenerationResult r =
            generate(stories260k(), tok(), "Once", s, [&](int, std::string_view) { return ++calls < 5; });
        QVERIFY(r.cancelled);
        QCOMPARE(static_cast<int>(r.tokens.size()), 5);
    }
};

QTEST_GUILESS_MAIN(TestGeneration)
#include "tst_generation.moc"
