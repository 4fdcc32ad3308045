package dev.mallquest.kstreams;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonToken;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CharsetDecoder;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;

/**
 * Receipt decoding with mallquest's rejection reasons, checked in its order (src/codec.rs):
 * size, UTF-8, nesting, JSON, object, repeated member, ids, issued_at, refund_of, type,
 * currency's type, amount, currency, key. One instance per processor (not thread-safe).
 */
public final class ReceiptCodec {
    /** Records larger than this are {@code too_large}. */
    public static final int MAX_RECORD_BYTES = 64 * 1024;
    private static final int MAX_ID_BYTES = 128;
    private static final int MAX_DEPTH = 64;
    public static final long MAX_AMOUNT = 100_000_000L;
    private static final long MAX_COINS = 1_000_000_000_000_000L;

    private static final JsonFactory JSON = new JsonFactory();

    private final Rules rules;
    private final CharsetDecoder utf8 = StandardCharsets.UTF_8.newDecoder()
            .onMalformedInput(CodingErrorAction.REPORT)
            .onUnmappableCharacter(CodingErrorAction.REPORT);

    public ReceiptCodec(Rules rules) {
        this.rules = rules;
    }

    /** A known member's value as the receipt schema looks at it. */
    private static final class Scalar {
        static final Scalar NULL = new Scalar(null, false);
        static final Scalar OTHER = new Scalar(null, false);
        /** A string's content, or a number's literal text. */
        final String text;
        final boolean number;

        Scalar(String text, boolean number) {
            this.text = text;
            this.number = number;
        }

        boolean isString() {
            return text != null && !number;
        }
    }

    private static final int RECEIPT_ID = 0, USER_ID = 1, STORE_ID = 2, AMOUNT = 3, ISSUED_AT = 4,
            CURRENCY = 5, TYPE = 6, REFUND_OF = 7, COINS = 8, MEMBERS = 9;

    private static int member(String name) {
        switch (name) {
            case "receipt_id": return RECEIPT_ID;
            case "user_id": return USER_ID;
            case "store_id": return STORE_ID;
            case "amount": return AMOUNT;
            case "issued_at": return ISSUED_AT;
            case "currency": return CURRENCY;
            case "type": return TYPE;
            case "refund_of": return REFUND_OF;
            case "coins": return COINS;
            default: return -1;
        }
    }

    public Receipt decode(byte[] key, byte[] payload) throws Reject.Rejected {
        if (payload == null) payload = new byte[0];
        if (payload.length > MAX_RECORD_BYTES) throw Reject.TOO_LARGE.error;
        String text;
        try {
            text = utf8.reset().decode(ByteBuffer.wrap(payload)).toString();
        } catch (CharacterCodingException e) {
            throw Reject.INVALID_JSON.error;
        }
        if (nestingDepth(payload) > MAX_DEPTH) throw Reject.INVALID_JSON.error;
        // serde_json takes no byte-order mark; Jackson would skip one.
        if (!text.isEmpty() && text.charAt(0) == '\uFEFF') throw Reject.INVALID_JSON.error;

        Scalar[] wire = new Scalar[MEMBERS];
        boolean repeated = false;
        boolean object;
        // Decoded strings can hold a lone surrogate only through a \\u escape (the bytes are
        // UTF-8): check strings for one (serde_json refuses it) only when there is an escape.
        boolean escapes = text.indexOf("\\u") >= 0;
        try (JsonParser p = JSON.createParser(text)) {
            JsonToken t = p.nextToken();
            if (t == null) throw Reject.INVALID_JSON.error;
            object = t == JsonToken.START_OBJECT;
            if (!object) {
                checked(p, t, escapes);
            } else {
                while ((t = p.nextToken()) != JsonToken.END_OBJECT) {
                    String name = p.currentName();
                    if (escapes) checkSurrogates(name);
                    t = p.nextToken();
                    int m = member(name);
                    if (m < 0) {
                        checked(p, t, escapes);
                    } else if (wire[m] != null) {
                        repeated = true;
                        checked(p, t, escapes);
                    } else {
                        wire[m] = scalar(p, t, escapes);
                    }
                }
            }
            if (p.nextToken() != null) throw Reject.INVALID_JSON.error;
        } catch (IOException e) {
            throw Reject.INVALID_JSON.error;
        }
        if (!object || repeated) throw Reject.SCHEMA.error;

        String receiptId = id(wire[RECEIPT_ID]);
        String userId = id(wire[USER_ID]);
        String storeId = id(wire[STORE_ID]);
        Scalar at = wire[ISSUED_AT];
        Instant9 issuedAt = at != null && at.isString() ? Instant9.parse(at.text) : null;
        if (issuedAt == null) throw Reject.SCHEMA.error;
        String refundOf = wire[REFUND_OF] == null ? null : id(wire[REFUND_OF]);
        String type = optString(wire[TYPE]);
        Receipt.Kind kind;
        long coins = 0;
        if (type == null || type.equals("purchase")) {
            kind = Receipt.Kind.PURCHASE;
            refundOf = null; // a purchase's refund_of is checked, then ignored
        } else if (type.equals("refund")) {
            kind = Receipt.Kind.REFUND;
            if (refundOf == null) throw Reject.SCHEMA.error;
        } else if (type.equals("redemption")) {
            kind = Receipt.Kind.REDEMPTION;
            coins = coins(wire[COINS]);
            refundOf = null;
        } else if (type.equals("redemption_reversal")) {
            kind = Receipt.Kind.REDEMPTION_REVERSAL;
            if (refundOf == null) throw Reject.SCHEMA.error;
        } else {
            throw Reject.SCHEMA.error;
        }
        String currency = optString(wire[CURRENCY]);
        long amount;
        if (kind == Receipt.Kind.PURCHASE || kind == Receipt.Kind.REFUND) {
            amount = amountField(wire[AMOUNT]);
        } else {
            amount = wire[AMOUNT] == null ? 0 : zeroOrAmount(wire[AMOUNT]);
        }
        if (currency != null && !currency.equals(rules.currency)) throw Reject.CURRENCY.error;
        if (key == null || !Arrays.equals(key, userId.getBytes(StandardCharsets.UTF_8))) {
            throw Reject.KEY_MISMATCH.error;
        }
        return new Receipt(receiptId, userId, storeId, amount, issuedAt, kind, refundOf, coins);
    }

    private static Scalar scalar(JsonParser p, JsonToken t, boolean escapes) throws IOException, Reject.Rejected {
        switch (t) {
            case VALUE_NULL:
                return Scalar.NULL;
            case VALUE_STRING: {
                String s = p.getText();
                if (escapes) checkSurrogates(s);
                return new Scalar(s, false);
            }
            case VALUE_NUMBER_INT:
            case VALUE_NUMBER_FLOAT: {
                String s = p.getText();
                checkNumber(s);
                return new Scalar(s, true);
            }
            default:
                checked(p, t, escapes);
                return Scalar.OTHER;
        }
    }

    /** Reads past one value, checking it is JSON as serde_json would parse it. */
    private static void checked(JsonParser p, JsonToken t, boolean escapes) throws IOException, Reject.Rejected {
        int depth = 0;
        while (true) {
            switch (t) {
                case START_OBJECT:
                case START_ARRAY:
                    depth++;
                    break;
                case END_OBJECT:
                case END_ARRAY:
                    depth--;
                    break;
                case FIELD_NAME:
                    if (escapes) checkSurrogates(p.currentName());
                    break;
                case VALUE_STRING:
                    if (escapes) checkSurrogates(p.getText());
                    break;
                case VALUE_NUMBER_INT:
                case VALUE_NUMBER_FLOAT:
                    checkNumber(p.getText());
                    break;
                default:
                    break;
            }
            if (depth == 0) return;
            t = p.nextToken();
            if (t == null) throw Reject.INVALID_JSON.error;
        }
    }

    /** serde_json refuses a number past f64's range. */
    private static void checkNumber(String literal) throws Reject.Rejected {
        if (literal.length() > 15 || literal.indexOf('e') >= 0 || literal.indexOf('E') >= 0) {
            if (Double.isInfinite(Double.parseDouble(literal))) throw Reject.INVALID_JSON.error;
        }
    }

    /** serde_json refuses a lone surrogate escape. */
    private static void checkSurrogates(String s) throws Reject.Rejected {
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            if (Character.isHighSurrogate(c)) {
                if (i + 1 < s.length() && Character.isLowSurrogate(s.charAt(i + 1))) {
                    i++;
                } else {
                    throw Reject.INVALID_JSON.error;
                }
            } else if (Character.isLowSurrogate(c)) {
                throw Reject.INVALID_JSON.error;
            }
        }
    }

    /** The deepest nesting of arrays and objects outside strings (mallquest's byte scan). */
    static int nestingDepth(byte[] bytes) {
        int depth = 0, max = 0;
        boolean inString = false, escaped = false;
        for (byte b : bytes) {
            if (inString) {
                if (escaped) escaped = false;
                else if (b == '\\') escaped = true;
                else if (b == '"') inString = false;
                continue;
            }
            switch (b) {
                case '"': inString = true; break;
                case '[': case '{': depth++; max = Math.max(max, depth); break;
                case ']': case '}': if (depth > 0) depth--; break;
                default: break;
            }
        }
        return max;
    }

    private static String optString(Scalar v) throws Reject.Rejected {
        if (v == null || v == Scalar.NULL) return null;
        if (v.isString()) return v.text;
        throw Reject.SCHEMA.error;
    }

    /** 1 to 128 bytes of UTF-8 without control characters. */
    private static String id(Scalar v) throws Reject.Rejected {
        if (v == null || !v.isString()) throw Reject.SCHEMA.error;
        String s = v.text;
        if (s.isEmpty() || utf8Length(s) > MAX_ID_BYTES) throw Reject.SCHEMA.error;
        for (int i = 0; i < s.length(); i++) {
            if (Character.isISOControl(s.charAt(i))) throw Reject.SCHEMA.error;
        }
        return s;
    }

    private static int utf8Length(String s) {
        int n = 0;
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            if (c < 0x80) n += 1;
            else if (c < 0x800) n += 2;
            else if (Character.isHighSurrogate(c)) { n += 4; i++; }
            else n += 3;
        }
        return n;
    }

    /** A redemption's coins: a JSON integer literal (digits only) from 1 to 10^15. */
    private static long coins(Scalar v) throws Reject.Rejected {
        if (v == null || !v.number || v.text.length() > 16) throw Reject.SCHEMA.error;
        for (int i = 0; i < v.text.length(); i++) {
            char c = v.text.charAt(i);
            if (c < '0' || c > '9') throw Reject.SCHEMA.error;
        }
        long c = Long.parseLong(v.text);
        if (c < 1 || c > MAX_COINS) throw Reject.SCHEMA.error;
        return c;
    }

    private static long amountField(Scalar v) throws Reject.Rejected {
        if (v == null || v.text == null) throw Reject.SCHEMA.error;
        long minor = parseAmount(v.text);
        if (minor < 0) throw Reject.AMOUNT.error;
        return minor;
    }

    /** An amount that may also be zero ({@code "0.00"}, {@code 0}), as on redemptions. */
    private static long zeroOrAmount(Scalar v) throws Reject.Rejected {
        if (v.text == null) throw Reject.SCHEMA.error;
        String t = v.text;
        int dot = t.indexOf('.');
        String whole = dot < 0 ? t : t.substring(0, dot);
        String frac = dot < 0 ? "0" : t.substring(dot + 1);
        if (!whole.isEmpty() && frac.length() >= 1 && frac.length() <= 2
                && (whole + frac).chars().allMatch(c -> c == '0')) {
            return 0;
        }
        return amountField(v);
    }

    /**
     * A plain decimal ({@code "12"}, {@code "12.3"}, {@code "12.34"}) in minor units, in
     * (0, 1000000.00]; -1 for every other form (src/domain/money.rs).
     */
    public static long parseAmount(String text) {
        int dot = text.indexOf('.');
        String whole = dot < 0 ? text : text.substring(0, dot);
        String frac = dot < 0 ? "" : text.substring(dot + 1);
        if (whole.isEmpty() || !allDigits(whole)) return -1;
        if (dot >= 0 && (frac.isEmpty() || frac.length() > 2 || !allDigits(frac))) return -1;
        int lead = 0;
        while (lead < whole.length() && whole.charAt(lead) == '0') lead++;
        whole = whole.substring(lead);
        if (whole.length() > 9) return -1;
        long w = whole.isEmpty() ? 0 : Long.parseLong(whole);
        long cents = frac.isEmpty() ? 0 : frac.length() == 1 ? (frac.charAt(0) - '0') * 10L : Long.parseLong(frac);
        long minor = w * 100 + cents;
        return minor > 0 && minor <= MAX_AMOUNT ? minor : -1;
    }

    private static boolean allDigits(String s) {
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            if (c < '0' || c > '9') return false;
        }
        return true;
    }
}
