"""Built-in prompt-injection patterns, shared by every persona.

``NORMALIZED`` patterns run on :func:`models.guardrails.text.normalize` output (lowercase words,
no punctuation), so they hold for spoken input whatever the recogniser's punctuation. They are
written to tolerate small recognition variations ("instruction"/"instructions", "jail break",
"you're"/"your", filler words between the key words) while leaving ordinary front-desk wording
alone ("ignore my old address", "what are your hours", "prompt payment discount").
``RAW`` patterns run on the text as typed: chat-template markers and encoded payloads.
"""

from __future__ import annotations

import re

_FILL = r"(?:\w+ ){0,4}?"
_OBJECTS = (
    r"(?:instructions?|instruction set|prompts?|guidelines?|directives?|programming|guardrails?"
    r"|rules?|restrictions?|constraints?|training|filters?|safety (?:settings|rules|guidelines)"
    r"|system message|(?:previous|prior|above|earlier) context"
    r"|(?:everything|all|what) (?:you were|youve been|you have been|youre|you are) "
    r"(?:told|taught|given|programmed|trained))"
)
_MODES = (
    r"(?:develop(?:er|ers|ment)?(?: a)?|dev|god|admin|administrator|debug(?:ging)?|maintenance"
    r"|sudo|root|unrestricted|unfiltered|uncensored|evil|chaos|dan|jailbreak|jailbroken|test)"
)
_AI = r"(?:ai|assistant|bot|chatbot|model|version|mode|answers?|responses?|persona)"

NORMALIZED: tuple[str, ...] = (
    # "ignore / disregard / forget (all) (your) previous instructions"
    rf"\b(?:ignore|ignoring|disregard|forget|override|overwrite|bypass|discard|dismiss|abandon"
    rf"|throw out|set aside) {_FILL}{_OBJECTS}\b",
    r"\bforget (?:everything|all) (?:above|before this|you know|you were|youve|you have)\b",
    r"\b(?:ignore|disregard|forget) (?:all |everything |the |what is |whats |what was )?(?:above"
    r"|previous|prior|preceding|earlier)(?: (?:text|message|messages|stuff|part))?(?: and| then"
    r"|$)|\bpwned\b",
    r"\b(?:you are|youre|your|you re) (?:not|no longer) (?:a|an|the|my) (?:\w+ )?(?:receptionist"
    r"|assistant|front desk|bot|ai|clinic \w+|employee)\b",
    r"\b(?:you are|youre|your|you re) (?:an?|my) (?:\w+ )?(?:hacker|villain|criminal|pirate"
    r"|rogue \w+|evil \w+)\b",
    r"\bforget (?:that )?(?:you are|youre|your|you re|youve been|you were|about being) (?:a|an|the"
    r"|my)\b",
    # identity overrides
    r"\b(?:you are|youre|your|you re|u r) now (?:a|an|my|no longer|free|unrestricted|unfiltered"
    r"|uncensored|dan|jailbroken|called|named|going to|gonna|acting|playing|in \w+ mode)\b",
    r"\b(?:you are|youre|your|you re) (?:a|an|my) (?:\w+ ){0,2}now\b",
    r"\bfrom now on (?:you are|youre|you will (?:be|act|respond|answer|reply|speak|talk|only"
    r"|ignore|pretend|say)|you must|you (?:act|respond|answer|reply|speak|talk|only)|your (?:name"
    r"|role|job|new)|act|respond|answer|reply|only answer|only respond|ignore)\b",
    r"\bpretend (?:to be|you are|youre|your|that you|you were|you have|to have|you can|you dont"
    r"|there are no|theres no)\b",
    r"\b(?:roleplay|role play|role playing|roleplaying|rp) (?:as|that|a|an|with me|time)\b",
    r"\blets (?:roleplay|role play|play a game where|play pretend|pretend)\b",
    r"\b(?:act|behave|respond|answer|talk|speak|reply) (?:like|as if|as though) (?:you are|youre"
    r"|you were|your|you have|you had|you dont)\b",
    r"\b(?:can you|could you|i want you to|i need you to|you will|you must|you should|please"
    r"|now) (?:act|serve|function|operate) as\b(?! (?:an? |my )?(?:witness|interpreter|translator"
    r"|reference|contact))",
    r"\bimagine (?:you are|youre|your|that you are|you were) (?:a|an|not|no longer|free"
    r"|unrestricted|my|the)\b",
    r"\b(?:stay|staying|remain) in character\b|\bbreak character\b",
    r"\b(?:act|behave|talk|respond|speak) like (?:a|an) (?:\w+ ){0,2}(?:ai|bot|chatbot|assistant"
    r"|hacker|model|character|persona|villain)\b|\b(?:ai|bot|assistant|chatbot) named \w+",
    r"\b(?:you|ai|assistant|bot|chatbot|model|named \w+) (?:\w+ ){0,4}(?:with|has|have|having)"
    r" (?:zero|no) (?:restrictions|rules|limits|filters|guidelines|boundaries|limitations"
    r"|censorship)\b",
    r"\byour (?:new|updated|real|true|actual) (?:name|role|persona|identity|instructions|task"
    r"|job|purpose|personality|directives|orders)\b",
    r"\b(?:here are|these are|follow) (?:your |the |my )?(?:new|updated|revised|real|true|actual)"
    r" (?:system )?(?:instructions|directives|orders|rules)\b|^(?:new|updated) (?:system )?"
    r"(?:instructions|directives)\b",
    r"\byou (?:have been|ve been|are|were) (?:freed|released|unlocked|jailbroken|reprogrammed"
    r"|liberated|unshackled)\b",
    r"\b(?:stop|quit) (?:being|acting like|pretending to be) (?:a|an|the) (?:\w+ )?(?:assistant"
    r"|receptionist|bot|ai|front desk)\b",
    r"\b(?:change|reset|update|replace|rewrite) (?:\w+ ){0,2}?your (?:instructions|programming"
    r"|system prompt|directives|persona|personality|identity)\b",
    # modes and jailbreaks
    rf"\b{_MODES} mode\b",
    r"\bjail ?br(?:ea|a|oke)k(?:s|ing|en)?\b|\bjail ?broken\b",
    r"\bdo anything now\b|\b(?:you are|youre|your|be|become|as|called|named) dan\b"
    r"|\bdan (?:prompt|jailbreak)\b",
    r"\bsudo\b|\b(?:root|developer|superuser) (?:access|privileges|rights|override|command)\b"
    r"|\badmin (?:privileges|override|command)\b",
    r"\b(?:override|admin|master|developer|secret) (?:code|password|key|token|phrase)\b",
    rf"\b(?:unfiltered|uncensored|unrestricted|unaligned|unshackled|unchained|unleashed|rogue"
    rf"|evil|jailbroken) {_AI}\b|\bbe (?:unfiltered|uncensored|unrestricted)\b",
    r"\b(?:without|remove|disable|turn off|switch off|lift|bypass|drop|break|free (?:from|of)"
    r"|no more|deactivate|ignore) (?:any |all |your |the |of |those |these |all of |any of )*"
    r"(?:guardrails|filters|filtering|censorship|safeguards|safety (?:filters|rules|guidelines"
    r"|features|settings|protocols|measures)|content (?:policy|policies|filters)|ethical "
    r"(?:guidelines|rules|constraints)|moral (?:guidelines|constraints)|programming|alignment)\b",
    r"\b(?:without|remove|disable|lift|bypass|ignore|no more|free of|free from) (?:any|all|your"
    r"|all your|all of your|any of your) (?:restrictions|rules|limitations|limits)\b",
    r"\bif you (?:had|have|were|didnt have) (?:no|without|free of|any) (?:rules|restrictions"
    r"|limits|filters|guidelines|instructions|guardrails)\b",
    r"\b(?:you|u) (?:dont|do not|no longer) (?:have to|need to|must) (?:follow|obey|listen to)"
    r" (?:\w+ ){0,2}?(?:rules|instructions|guidelines|policies|programming)\b",
    r"\b(?:you are|youre|your) (?:not|no longer) (?:bound|restricted|limited|constrained)\b",
    r"\b(?:you|u) can (?:now )?(?:say|do|answer) anything\b|\bopposite day\b",
    r"\b(?:i am|im) (?:your|the|an?) (?:developer|creator|admin|administrator|programmer|owner"
    r"|operator|system administrator|sysadmin|engineer)\b",
    r"\b(?:from|at|with) (?:openai|anthropic|your developers|the developers)\b",
    # system prompt and hidden instructions
    r"\bsystem (?:prompt|prompts|message|instructions?|rules|text)\b",
    r"\b(?:your|the|this|my|that) prompt\b(?! (?:payment|pay|care|service|attention|reply"
    r"|response|refill|appointment|visit))",
    r"\b(?:pre ?prompt|meta ?prompt|initial prompt|original prompt|hidden prompt|secret prompt)\b",
    r"\byour (?:initial|original|hidden|secret|internal|underlying|base|real|actual|exact|full"
    r"|complete|first|core|starting|operating|top secret|confidential) (?:prompt|instructions?"
    r"|rules|directives?|guidelines|programming|configuration|setup)\b",
    r"\b(?:what|which) (?:are|were|is) your (?:instructions|directives|orders|programming"
    r"|guidelines|rules)\b(?! (?:for|on|about|regarding|when|if|before|after|with))",
    r"\bwhat (?:were|have) you (?:been )?(?:told|instructed|programmed|prompted|trained|ordered)"
    r"(?: to| not to)?\b",
    r"\bhow (?:were|are|have) you (?:been )?(?:programmed|instructed|prompted|configured)\b",
    r"\b(?:program|programmed|coded|hard ?coded|trained|loaded|built|baked|wired|put) (?:\w+ )?"
    r"(?:into|in) you\b",
    r"\b(?:developers?|creators?|programmers?|makers|owners?|company|they|openai|anthropic)"
    r" (?:\w+ ){0,2}(?:tell|told|instruct|instructed|program|programmed|ask|asked) you (?:to"
    r"|not to)\b",
    r"\b(?:exact|full|complete|entire|original|verbatim) (?:text|wording|words|content|contents)"
    r" of your\b|\b(?:text|wording|contents?) of your (?:instructions|guidelines|rules|prompt"
    r"|programming|directives)\b",
    r"\b(?:first|initial|very first) (?:thing|things|message|words|lines?|instructions?) (?:you"
    r" were|youve been|you have been|you got|you received|you read|you saw)\b",
    r"\b(?:instructions|rules|prompt|guidelines|directives|orders) (?:that )?(?:you were|youve"
    r" been|you have been|you got|they gave you|you received|were given to you)\b",
    r"\b(?:what|which) (?:rules|instructions|guidelines|directives|prompt) (?:were you|have you"
    r" been|did (?:they|the \w+|your \w+) (?:give|program|set|put|load))\b",
    r"\b(?:hidden|secret|internal|invisible|confidential|behind the scenes) (?:rules|instructions"
    r"|prompt|guidelines|directives|settings|configuration|orders)\b",
    r"\byour (?:configuration|config|parameters|setup)\b|\b(?:summari[sz]e|paraphrase|outline"
    r"|describe) your (?:\w+ ){0,2}?(?:instructions|prompt|configuration|programming|setup)\b",
    r"\b(?:everything|all|what|the text|whatever) (?:that )?(?:came|comes|was said|was written"
    r"|is written|appears|was sent|you got|you received) (?:before|above|prior to) (?:my|this"
    r"|the|our) (?:first )?(?:message|question|conversation|chat)\b",
    r"\b(?:repeat|print|show|reveal|output|display|recite|dump|leak|expose|spell out|copy|paste"
    r"|quote|write out|type out|read back|read out|say back|tell me|give me|share) "
    r"(?:\w+ ){0,4}?(?:your|the (?:system|hidden|secret|original|initial|developer|exact|full"
    r"|complete|above|previous|real)) (?:\w+ ){0,2}?(?:instructions|programming|directives"
    r"|configuration|context window)\b(?! (?:for|on|about|regarding|before|after))",
    r"\b(?:repeat|print|show|output|display|recite|read|copy|say|write) (?:\w+ ){0,3}?"
    r"(?:(?:above|preceding|before this) (?:text|words|content|lines|conversation|paragraphs?"
    r"|messages?|instructions)|(?:previous|prior|earlier|initial|first) (?:text|content"
    r"|paragraphs?|instructions|prompt))\b",
    r"\b(?:repeat|print|output|recite|write|say|show|display|copy) (?:back )?(?:\w+ ){0,2}?"
    r"(?:text|words|content|lines|instructions|messages?|everything|all) (?:above|before this"
    r"|verbatim)\b",
    r"\b(?:start|begin) (?:your (?:answer|reply|response)|with) (?:with )?(?:the words )?"
    r"(?:you are|i am|sure here|certainly here)\b",
    # encoded payloads
    r"\b(?:base ?64|base sixty four|rot ?13|rot thirteen|rot one three|caesar cipher|leet ?speak"
    r"|l33t|morse code|in hex|hex (?:encoded|string|code)|hexadecimal|binary code|ascii codes?"
    r"|unicode escapes?|url encoded|encoded (?:message|text|string|instructions?|payload)"
    r"|decode (?:this|the following|and)|encode (?:your|the) (?:instructions|prompt|rules))\b",
    r"\b(?:spell|write|say|print) (?:it|that|this|them) (?:backwards|in reverse)\b",
    r"\b(?:spell|write|say|print|give me|tell me) your (?:\w+ ){0,2}?(?:prompt|instructions|rules"
    r"|password|secret) (?:backwards|in reverse|one letter at a time|letter by letter|in pig latin"
    r"|in another language|in code)\b",
    r"\b(?:execute|obey|follow) (?:the following|these new|my new)\b|\b(?:execute|run) (?:this"
    r"|these|the following) (?:\w+ )?(?:code|commands?|script|payload)\b",
    r"\btranslate (?:the following|this) (?:\w+ ){0,2}?(?:and|then) (?:do|follow|execute|obey)\b",
)

RAW: tuple[str, ...] = (
    r"<\|[a-z_]+\|>|\[/?INST\]|<<\s*/?SYS\s*>>|</?(?:system|instructions?)>",
    r"^\s*(?:system|developer|assistant)\s*:|\n\s*(?:system|developer)\s*:|#{2,}\s*(?:system"
    r"|instructions?)\b",
    r"(?<![A-Za-z0-9+/])(?=[A-Za-z0-9+/]*[a-z])(?=[A-Za-z0-9+/]*[A-Z])(?=[A-Za-z0-9+/]*\d)"
    r"[A-Za-z0-9+/]{32,}={0,2}",
    r"\b(?=[0-9a-fA-F]*[a-fA-F])(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{32,}\b",
    r"(?:\\x[0-9a-fA-F]{2}){4,}|(?:&#x?[0-9a-fA-F]+;){4,}|(?:%[0-9a-fA-F]{2}){6,}",
)


def compile_injection() -> tuple[tuple[re.Pattern[str], ...], tuple[re.Pattern[str], ...]]:
    """The compiled (normalised-text, raw-text) pattern sets."""
    return (
        tuple(re.compile(p, re.IGNORECASE) for p in NORMALIZED),
        tuple(re.compile(p, re.IGNORECASE | re.MULTILINE) for p in RAW),
    )
