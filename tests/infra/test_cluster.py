def test_check(check_result):
    c = check_result
    assert c["outcome"] == "pass", (f"{c['host']}: {c['title']}\n expected: {c['expected']}\n found: {c['found']}"
                                    f"\n hint: {c['hint']}")
