/** The text generated tokenizers learn their merges from (any prose works; this is ours). */
export const TOKENIZER_CORPUS = `kvant runs quantized language models inside Node.js services. The model reads a prompt,
turns it into tokens, and predicts the next token again and again until it stops. Each layer
normalizes the hidden state, attends to the tokens before it through a compressed latent cache,
and sends the result through a mixture of experts: a router picks a few experts for every token,
and shared experts see every token. Weights are stored with four bits per value in groups of one
hundred and twenty eight, with one scale per group, so the model needs a quarter of the memory.
The decode loop is limited by how fast memory can be read, so the kernels stream every weight byte
once. User: What is the capital of France? Assistant: The capital of France is Paris.
User: Write a function that adds two numbers. Assistant: function add(a, b) { return a + b; }
Numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000, punctuation . , ; : ! ? ( ) [ ] { } " ' - + = * / < >.
Le modèle lit le texte; das Modell liest den Text; el modelo lee el texto. 模型读取文本。`;

/** A chat template in the style DeepSeek-V2 chat models use ("User: ...\\n\\nAssistant: ..."). */
export const CHAT_TEMPLATE =
  "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}" +
  "{{ bos_token }}{% for message in messages %}" +
  "{% if message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\\n\\n' }}" +
  "{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token }}" +
  "{% elif message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}{% endif %}{% endfor %}" +
  "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}";
