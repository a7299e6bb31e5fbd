from multimodal_tags.data.schema import Product, detect_language


def test_language_detection_english_chinese_mixed():
    assert detect_language("Red cotton T-shirt") == "en"
    assert detect_language("红色棉质T恤") == "zh"
    assert detect_language("Nike 运动鞋 男款") == "zh"
    assert detect_language("") == "en"


def test_product_infers_language_unless_given():
    assert Product(id="1", title="蓝色马克杯").language == "zh"
    assert Product(id="1", title="蓝色马克杯", language="en").language == "en"


def test_content_hash_tracks_what_encoders_see():
    a = Product(id="1", title="Red shirt", description="cotton", image="a.jpg", image_hash="abc")
    same = Product(id="1", title="Red shirt", description="cotton", image="b.jpg", image_hash="abc",
                   category="Shirts", tags=["colour:red"])
    assert a.content_hash == same.content_hash  # labels and file names are not model input
    assert a.content_hash != Product(id="1", title="Blue shirt", description="cotton", image_hash="abc").content_hash
    assert a.content_hash != Product(id="1", title="Red shirt", description="cotton", image_hash="abd").content_hash
    assert a.text_hash == Product(id="2", title="Red shirt", description="cotton").text_hash


def test_dict_round_trip_recomputes_hash():
    p = Product(id="9", title="Mug", description="ceramic", tags=["material:ceramic"], split="val",
                extra={"brand": "X"}, image="m.jpg", image_hash="h")
    d = p.to_dict()
    d["content_hash"] = "forged"
    q = Product.from_dict(d)
    assert q == p and q.content_hash == p.content_hash
