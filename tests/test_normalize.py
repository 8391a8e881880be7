from dynamicrag.evaluate import contains_answer, normalize_answer


def test_squad_normalisation():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("An apple, a day") == "apple day"


def test_containment_on_whole_tokens():
    assert contains_answer("It was Wilhelm Conrad Röntgen, in 1901.", ["wilhelm conrad röntgen"])
    assert not contains_answer("in 19015", ["1901"])
    assert not contains_answer("anything", ["", "the"])  # empty after normalisation never matches
    assert not contains_answer("", ["x"])
